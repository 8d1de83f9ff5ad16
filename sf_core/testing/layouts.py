"""A tiny DiT state dict written in every real layout Wan2.1 / Self Forcing checkpoints ship in (official `.pt`
with its nesting and wrappers, Wan single / sharded safetensors, ComfyUI full / flattened / native AR, diffusers),
for loader tests. The diffusers names are spelled out independently of `sf_core.weights.checkpoint`'s table."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sf_core.config import ModelConfig
from sf_core.weights.checkpoint import wan_param_shapes

TINY = ModelConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64, freq_dim=256)


def random_sd(cfg: ModelConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in wan_param_shapes(cfg).items()}


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def diffusers_name(key: str) -> str:
    top = {"time_embedding.0": "condition_embedder.time_embedder.linear_1",
           "time_embedding.2": "condition_embedder.time_embedder.linear_2",
           "time_projection.1": "condition_embedder.time_proj",
           "text_embedding.0": "condition_embedder.text_embedder.linear_1",
           "text_embedding.2": "condition_embedder.text_embedder.linear_2",
           "head.head": "proj_out", "patch_embedding": "patch_embedding"}
    if key == "head.modulation":
        return "scale_shift_table"
    if not key.startswith("blocks."):
        module, param = key.rsplit(".", 1)
        return f"{top[module]}.{param}"
    _, i, rest = key.split(".", 2)
    if rest == "modulation":
        return f"blocks.{i}.scale_shift_table"
    for wan, new in (("self_attn.", "attn1."), ("cross_attn.", "attn2.")):
        if rest.startswith(wan):
            module, param = rest[len(wan):].rsplit(".", 1)
            proj = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}.get(module, module)
            return f"blocks.{i}.{new}{proj}.{param}"
    rest = rest.replace("norm3.", "norm2.").replace("ffn.0.", "ffn.net.0.proj.").replace("ffn.2.", "ffn.net.2.")
    return f"blocks.{i}.{rest}"


def write_layout(layout: str, sd: dict, root: Path) -> Path:
    """Write `sd` into `root` in the named real-world layout; returns the path to load."""
    if layout == "official_pt_ema":
        p = root / "self_forcing_dmd.pt"
        torch.save({"generator_ema": {"model." + k: v for k, v in sd.items()}}, p)
    elif layout == "official_pt_generator_fsdp":
        p = root / "model.pt"
        fsdp = {}
        for k, v in sd.items():
            k = k.replace("blocks.0.", "blocks.0._fsdp_wrapped_module.")
            fsdp["model._fsdp_wrapped_module." + k] = v
        torch.save({"generator": fsdp, "critic": {"model.x": torch.zeros(1)}}, p)
    elif layout == "ode_init_model_key":
        p = root / "ode_init.pt"
        torch.save({"model": {"model." + k: v for k, v in sd.items()}}, p)
    elif layout == "flat_pt_ddp_compile":
        p = root / "flat.pth"
        torch.save({"module._orig_mod." + k: v for k, v in sd.items()}, p)
    elif layout == "wan_single":
        p = root / "diffusion_pytorch_model.safetensors"
        save_file(sd, p)
    elif layout in ("wan_sharded_index", "wan_sharded_folder"):
        keys = list(sd)
        halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        weight_map = {}
        for shard, names in halves.items():
            save_file({k: sd[k] for k in names}, root / shard)
            weight_map.update({k: shard for k in names})
        total = sum(v.numel() * v.element_size() for v in sd.values())
        index = root / "diffusion_pytorch_model.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
        p = index if layout == "wan_sharded_index" else root
    elif layout == "comfy_full_checkpoint":
        p = root / "wan_full.safetensors"
        full = {"model.diffusion_model." + k: v for k, v in sd.items()}
        full["first_stage_model.decoder.conv1.weight"] = torch.zeros(4, 4)
        full["cond_stage_model.t5xxl.transformer.shared.weight"] = torch.zeros(4, 4)
        save_file(full, p)
    elif layout == "comfy_flattened_generator":
        p = root / "flattened.safetensors"
        save_file({"model." + k: v for k, v in sd.items()}, p)
    elif layout == "diffusers_folder":
        p = root / "transformer"
        p.mkdir()
        save_file({diffusers_name(k): v for k, v in sd.items()}, p / "diffusion_pytorch_model.safetensors")
        (p / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    elif layout == "comfy_native_ar":
        p = root / "ar.safetensors"
        save_file(sd, p, metadata={"config": json.dumps({"transformer": {"causal_ar": True}})})
    else:
        raise AssertionError(layout)
    return p


LAYOUTS = ["official_pt_ema", "official_pt_generator_fsdp", "ode_init_model_key", "flat_pt_ddp_compile",
           "wan_single", "wan_sharded_index", "wan_sharded_folder", "comfy_full_checkpoint",
           "comfy_flattened_generator", "diffusers_folder", "comfy_native_ar"]


def wan_vae_keys() -> dict:
    return {"encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 3), "conv1.weight": torch.zeros(32, 32, 1, 1, 1),
            "decoder.middle.0.residual.0.gamma": torch.zeros(32, 1, 1, 1),
            "decoder.head.0.gamma": torch.zeros(8, 1, 1, 1)}
