"""Checkpoint reading/writing against real files in every layout Wan2.1 / Self Forcing weights ship in."""
from __future__ import annotations

import json
import math
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sf_core.weights.checkpoint import (CheckpointError, check_state_dict, diffusers_to_wan, load_model, load_state_dict,
                                model_config_from, save_comfy_native_ar, save_diffusers, save_safetensors,
                                wan_param_shapes, wan_to_diffusers, write_safetensors_atomic)
from sf_core.config import WAN_1_3B, WAN_14B, ConfigError, ModelConfig, StreamConfig
from sf_core.testing.layouts import LAYOUTS, TINY, assert_same, diffusers_name, random_sd, wan_vae_keys, write_layout

# --------------------------------------------------------------------------------------------------
# Parameter table


def test_wan_1_3b_table_matches_reference_counts():
    shapes = wan_param_shapes(WAN_1_3B)
    assert len(shapes) == 825
    assert sum(math.prod(s) for s in shapes.values()) == 1_418_996_800
    top = [k for k in shapes if not k.startswith("blocks.")]
    assert len(top) == 15
    block0 = {k: s for k, s in shapes.items() if k.startswith("blocks.0.")}
    assert len(block0) == 27
    assert sum(math.prod(s) for s in block0.values()) == 46_440_704
    assert shapes["patch_embedding.weight"] == (1536, 16, 1, 2, 2)
    assert shapes["time_projection.1.weight"] == (9216, 1536)
    assert shapes["head.head.weight"] == (64, 1536)
    assert shapes["head.modulation"] == (1, 2, 1536)
    assert shapes["blocks.29.modulation"] == (1, 6, 1536)
    assert shapes["blocks.29.ffn.2.weight"] == (1536, 8960)
    assert "freqs" not in shapes


def test_wan_14b_table_and_config_inference_round_trip():
    shapes = wan_param_shapes(WAN_14B)
    assert len(shapes) == 15 + 40 * 27
    meta_sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert model_config_from(meta_sd, {}, "14B") == WAN_14B


def test_model_on_meta_device_has_exactly_the_table():
    from sf_core.model import CausalWanModel

    with torch.device("meta"):
        model = CausalWanModel(WAN_1_3B)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == wan_param_shapes(WAN_1_3B)
    assert sum(p.numel() for p in model.parameters()) == 1_418_996_800


def test_diffusers_mapping_matches_independent_names_both_ways():
    sd = random_sd()
    mapped = wan_to_diffusers(sd)
    assert sorted(mapped) == sorted(diffusers_name(k) for k in sd)
    assert "blocks.1.attn1.to_out.0.weight" in mapped and "blocks.0.ffn.net.0.proj.bias" in mapped
    assert_same(diffusers_to_wan(mapped), sd)


# --------------------------------------------------------------------------------------------------
# Every real layout loads to identical tensors


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_identical_tensors(layout, tmp_path):
    sd = random_sd()
    loaded, meta = load_state_dict(write_layout(layout, sd, tmp_path))
    assert_same(loaded, sd)
    assert model_config_from(loaded, meta, layout) == TINY
    assert "sf_source_layout" in meta


def test_safetensors_renamed_to_pt_is_recognised_by_content(tmp_path):
    sd = random_sd()
    p = tmp_path / "renamed.pt"
    save_file({"model.diffusion_model." + k: v for k, v in sd.items()}, p)
    assert_same(load_state_dict(p)[0], sd)


def test_official_pt_prefers_ema_over_generator(tmp_path):
    ema, gen = random_sd(seed=1), random_sd(seed=2)
    p = tmp_path / "both.pt"
    torch.save({"generator": {"model." + k: v for k, v in gen.items()},
                "generator_ema": {"model." + k: v for k, v in ema.items()}}, p)
    loaded, meta = load_state_dict(p)
    assert_same(loaded, ema)
    assert meta["sf_source_entry"] == "generator_ema"


def test_native_ar_metadata_is_returned(tmp_path):
    _, meta = load_state_dict(write_layout("comfy_native_ar", random_sd(), tmp_path))
    assert json.loads(meta["config"])["transformer"]["causal_ar"] is True


def test_scaled_fp8_is_dequantised(tmp_path):
    sd = {k: v.to(torch.bfloat16) for k, v in random_sd().items()}
    stored, expected = {"model.diffusion_model.scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for k, v in sd.items():
        linear = k.endswith(".weight") and v.ndim == 2
        if linear:
            scale = v.float().abs().max() / 448.0
            w8 = (v.float() / scale).to(torch.float8_e4m3fn)
            stored["model.diffusion_model." + k] = w8
            stored["model.diffusion_model." + k[:-len("weight")] + "scale_weight"] = scale.reshape(())
            stored["model.diffusion_model." + k[:-len("weight")] + "scale_input"] = torch.ones(())
            expected[k] = (w8.float() * scale).to(torch.bfloat16)
        else:
            stored["model.diffusion_model." + k] = v
            expected[k] = v
    p = tmp_path / "wan_fp8_scaled.safetensors"
    save_file(stored, p)
    loaded, _ = load_state_dict(p)
    assert_same(loaded, expected)
    err = (loaded["blocks.0.ffn.0.weight"].float() - sd["blocks.0.ffn.0.weight"].float()).abs().max()
    assert 0 < err < 0.1 * sd["blocks.0.ffn.0.weight"].float().abs().max()  # fp8 really was lossy


def test_mixed_precision_weight_scale_convention(tmp_path):
    sd = random_sd()
    w = sd["blocks.1.cross_attn.v.weight"]
    scale = w.abs().max() / 448.0
    w8 = (w / scale).to(torch.float8_e4m3fn)
    stored = dict(sd)
    stored["blocks.1.cross_attn.v.weight"] = w8
    stored["blocks.1.cross_attn.v.weight_scale"] = scale.reshape(())
    stored["blocks.1.cross_attn.v.input_scale"] = torch.ones(())
    p = tmp_path / "mixed.safetensors"
    save_file(stored, p)
    loaded, _ = load_state_dict(p)
    assert torch.equal(loaded["blocks.1.cross_attn.v.weight"], w8.float() * scale)
    assert sorted(loaded) == sorted(sd)


# --------------------------------------------------------------------------------------------------
# Writers


def test_save_safetensors_writes_bare_keys_and_our_metadata(tmp_path):
    sd = random_sd()
    stream = StreamConfig(chunk_frames=1, denoising_steps=(1000.0, 500.0), shift=3.0, window=9, sink=3)
    p = save_safetensors(sd, tmp_path / "out" / "sf.safetensors", stream_config=stream)
    with safe_open(str(p), "pt") as f:
        header = f.metadata()
        assert sorted(f.keys()) == sorted(sd)
    assert header["sf_format_version"] == "1"
    assert ModelConfig.from_json(header["sf_model"]) == TINY
    loaded, meta = load_state_dict(p)
    assert_same(loaded, sd)
    assert StreamConfig.from_metadata(meta) == stream
    assert list(tmp_path.joinpath("out").iterdir()) == [p]  # no temporary file left behind
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert p.stat().st_mode == plain.stat().st_mode  # same permissions as any new file (umask)


def test_sf_model_metadata_allows_non_128_head_size(tmp_path):
    cfg = ModelConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=1, text_dim=32, freq_dim=32)
    sd = random_sd(cfg)
    with pytest.raises(ConfigError, match="multiple of the Wan2.1 head size 128"):
        save_safetensors(sd, tmp_path / "x.safetensors")
    p = save_safetensors(sd, tmp_path / "head32.safetensors", model_config=cfg)
    loaded, meta = load_state_dict(p)
    assert model_config_from(loaded, meta, str(p)) == cfg
    assert model_config_from(loaded, meta, str(p)).head_dim == 32


def test_save_comfy_native_ar_marks_causal_ar(tmp_path):
    sd = random_sd()
    p = save_comfy_native_ar(sd, tmp_path / "ar.safetensors", StreamConfig(chunk_frames=1))
    loaded, meta = load_state_dict(p)
    assert_same(loaded, sd)
    assert json.loads(meta["config"]) == {"transformer": {"causal_ar": True}}
    assert StreamConfig.from_metadata(meta).chunk_frames == 1


def test_save_diffusers_folder(tmp_path):
    sd = random_sd()
    p = save_diffusers(sd, tmp_path / "transformer")
    cfg = json.loads((tmp_path / "transformer" / "config.json").read_text())
    assert cfg["_class_name"] == "WanTransformer3DModel"
    assert (cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["num_layers"]) == (2, 128, 2)
    with safe_open(str(p), "pt") as f:
        assert sorted(f.keys()) == sorted(diffusers_name(k) for k in sd)
    assert_same(load_state_dict(tmp_path / "transformer")[0], sd)


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.safetensors"
    save_safetensors(random_sd(seed=1), target)
    before = target.read_bytes()
    with pytest.raises(AttributeError):
        write_safetensors_atomic({"a": torch.zeros(2), "b": "not a tensor"}, target, {})
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == [target]


def test_writer_refuses_incomplete_state_dict(tmp_path):
    sd = random_sd()
    del sd["blocks.1.ffn.2.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): 'blocks.1.ffn.2.bias'"):
        save_safetensors(sd, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# Bad input


class WritesMarker:
    """Unpickling this object opens (creates) a file: the simplest code-execution payload."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_without_running_it(container, tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "self_forcing_dmd.pt"
    payload = {"generator_ema": {"model.head.modulation": WritesMarker(marker)}}
    if container == "torch_zip":
        torch.save(payload, p)
    else:
        with open(p, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(CheckpointError) as e:
        load_state_dict(p)
    assert not marker.exists()
    msg = str(e.value)
    assert str(p) in msg and "refused" in msg and "execute code" in msg
    # Control: an unrestricted unpickler really runs the payload, so the refusal above is meaningful.
    data = zipfile.ZipFile(p).read(next(n for n in zipfile.ZipFile(p).namelist() if n.endswith("data.pkl"))) \
        if container == "torch_zip" else p.read_bytes()
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file(suffix, tmp_path):
    p = tmp_path / f"model{suffix}"
    sd = random_sd()
    save_file(sd, p) if suffix == ".safetensors" else torch.save({"generator_ema": sd}, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_state_dict(p)
    assert str(p) in str(e.value)


def test_garbage_file(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(p)


def test_missing_file_and_missing_shard(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_state_dict(tmp_path / "nope.safetensors")
    index = write_layout("wan_sharded_index", random_sd(), tmp_path)
    (tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard 'diffusion_pytorch_model-00002-of-00002.safetensors'"):
        load_state_dict(index)


@pytest.mark.parametrize("keys, looks_like, folder", [
    (wan_vae_keys(), "a Wan2.1 VAE", "models/vae"),
    ({"shared.weight": torch.zeros(8, 4), "encoder.final_layer_norm.weight": torch.zeros(4),
      "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4)}, "text encoder", "models/text_encoders"),
    ({"token_embedding.weight": torch.zeros(8, 4), "blocks.0.attn.q.weight": torch.zeros(4, 4)},
     "official Wan umT5", "models/text_encoders"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 256)}, "a LoRA", "models/loras"),
])
def test_wrong_model_type_says_what_it_looks_like(keys, looks_like, folder, tmp_path):
    p = tmp_path / "wrong.safetensors"
    save_file(keys, p)
    with pytest.raises(CheckpointError) as e:
        load_state_dict(p)
    msg = str(e.value)
    assert str(p) in msg and "not a Wan2.1 DiT" in msg and looks_like in msg and folder in msg


def test_unknown_file_lists_its_keys(tmp_path):
    p = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2), "bar.bias": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match=r"none of its 2 keys ends in 'head.modulation'.*'bar.bias', 'foo.weight'"):
        load_state_dict(p)


def test_pt_without_a_generator(tmp_path):
    p = tmp_path / "critic_only.pt"
    torch.save({"critic": {"model.head.modulation": torch.zeros(1)}, "step": 5}, p)
    with pytest.raises(CheckpointError, match=r"no tensors found.*nested dicts \['critic'\].*generator_ema"):
        load_state_dict(p)


def test_two_dits_in_one_file(tmp_path):
    gen, critic = random_sd(seed=1), random_sd(seed=2)
    p = tmp_path / "two.safetensors"
    save_file({**{"generator." + k: v for k, v in gen.items()}, **{"critic." + k: v for k, v in critic.items()}}, p)
    with pytest.raises(CheckpointError, match="holds 2 DiTs under the prefixes 'critic.', 'generator.'"):
        load_state_dict(p)


def test_check_reports_missing_unexpected_and_shapes():
    sd = random_sd()
    for k in ("blocks.1.ffn.0.bias", "blocks.1.norm3.weight", "blocks.0.cross_attn.o.bias"):
        del sd[k]
    sd["blocks.0.self_attn.k_img.weight"] = torch.zeros(256, 256)
    sd["blocks.1.self_attn.q.weight"] = torch.zeros(256, 128)
    with pytest.raises(CheckpointError) as e:
        check_state_dict(sd, TINY, "tiny.safetensors")
    msg = str(e.value)
    assert msg.startswith("tiny.safetensors: ")
    assert ("3 missing key(s): 'blocks.0.cross_attn.o.bias' [256], 'blocks.1.norm3.weight' [256], "
            "'blocks.1.ffn.0.bias' [512]") in msg
    assert "1 unexpected key(s): 'blocks.0.self_attn.k_img.weight'" in msg
    assert "key 'blocks.1.self_attn.q.weight' has shape [256, 128], expected [256, 256]" in msg
    assert "dim 256, 2 layers" in msg


def test_diffusers_file_with_unknown_keys(tmp_path):
    sd = {diffusers_name(k): v for k, v in random_sd().items()}
    sd["blocks.0.attn2.add_k_proj.weight"] = torch.zeros(256, 256)
    p = tmp_path / "diffusers.safetensors"
    save_file(sd, p)
    with pytest.raises(CheckpointError, match=r"1 key\(s\) have no diffusers -> Wan mapping: "
                                              r"'blocks.0.attn2.add_k_proj.weight'"):
        load_state_dict(p)


# --------------------------------------------------------------------------------------------------
# load_model


def tiny_inputs():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, 16, 4, 4, generator=g)       # [B, F, C, H, W]
    t = torch.tensor([[900.0, 900.0, 900.0]])          # [B, F]
    context = torch.randn(1, 8, TINY.text_dim, generator=g)  # [B, L, text_dim]
    return x, t, context


def test_load_model_matches_a_normally_built_model(tmp_path):
    from sf_core.model import CausalWanModel

    sd = random_sd()
    p = write_layout("official_pt_ema", sd, tmp_path)
    model, stream = load_model(p)
    assert stream == StreamConfig()  # no sf_stream metadata -> official defaults
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in model.state_dict().values())
    assert_same(model.state_dict(), sd)
    reference = CausalWanModel(TINY)
    reference.load_state_dict(sd)
    with torch.no_grad():
        out, want = model(*tiny_inputs()), reference(*tiny_inputs())
    assert out.shape == (1, 3, 16, 4, 4)
    assert torch.allclose(out, want, atol=1e-5, rtol=0)


def test_load_model_dtype_and_stream_config_precedence(tmp_path):
    sd = random_sd()
    stored = StreamConfig(chunk_frames=1, shift=3.0)
    p = save_safetensors(sd, tmp_path / "m.safetensors", stream_config=stored)
    model, stream = load_model(p, dtype=torch.bfloat16)
    assert stream == stored
    assert {v.dtype for v in model.state_dict().values()} == {torch.bfloat16}
    assert torch.equal(model.state_dict()["blocks.1.ffn.0.weight"], sd["blocks.1.ffn.0.weight"].to(torch.bfloat16))
    given = StreamConfig(window=9, sink=3)
    assert load_model(p, stream_config=given)[1] == given


def test_load_model_uses_sf_model_metadata_for_other_head_sizes(tmp_path):
    cfg = ModelConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=1, text_dim=32, freq_dim=32)
    p = save_safetensors(random_sd(cfg), tmp_path / "head32.safetensors", model_config=cfg)
    model, _ = load_model(p)
    assert model.config == cfg


def test_load_model_errors_name_file_and_keys(tmp_path):
    sd = random_sd()
    sd["blocks.0.ffn.2.weight"] = torch.zeros(256, 100)
    p = tmp_path / "bad_shape.safetensors"
    save_file(sd, p)
    with pytest.raises(CheckpointError) as e:
        load_model(p)
    assert str(p) in str(e.value)
    assert "'blocks.0.ffn.2.weight' has shape [256, 100], expected [256, 512]" in str(e.value)
    vae = tmp_path / "wan_2.1_vae.safetensors"
    save_file(wan_vae_keys(), vae)
    with pytest.raises(CheckpointError, match="looks like a Wan2.1 VAE - put it in models/vae"):
        load_model(vae)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_model_onto_cuda(tmp_path):
    sd = random_sd()
    model, _ = load_model(write_layout("wan_single", sd, tmp_path), dtype=torch.bfloat16, device="cuda")
    assert {v.device.type for v in model.state_dict().values()} == {"cuda"}
    assert torch.equal(model.state_dict()["head.head.weight"].cpu(), sd["head.head.weight"].to(torch.bfloat16))


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_named_pt_give_a_checkpoint_error(tmp_path, seed):
    import random
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(random.Random(seed).randrange(256) for _ in range(400)))
    with pytest.raises(CheckpointError, match="noise.pt"):
        load_state_dict(path)
