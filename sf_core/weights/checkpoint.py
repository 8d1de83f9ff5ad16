"""Read and write Wan2.1 DiT checkpoints in every layout Self Forcing weights circulate in.

Readers return bare Wan2.1 keys (`blocks.0.self_attn.q.weight`, ...) whatever the source layout:
official Self-Forcing `.pt` (nested `generator_ema` / `generator` / `model`, `model.` prefix, FSDP /
DDP / torch.compile wrapper segments), Wan-native safetensors (single or sharded with an index JSON),
ComfyUI full checkpoints (`model.diffusion_model.`) and diffusion-model files, diffusers
`WanTransformer3DModel` names, ComfyUI native AR files, and ComfyUI scaled fp8 (dequantised).
Writers produce bare Wan keys plus metadata: ours (`sf_format_version`, `sf_model`, `sf_stream`) and,
for ComfyUI's native AR path, `config = {"transformer": {"causal_ar": true}}`.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file

from sf_core.config import ModelConfig, StreamConfig, infer_config
from sf_core.model import CausalWanModel
from sf_core.weights import files
from sf_core.weights.files import WeightsError, few

FORMAT_VERSION = "1"
WAN_ANCHOR = "head.modulation"                          # present in every Wan2.1 DiT (ComfyUI's detector key)
DIFFUSERS_ANCHOR = "condition_embedder.time_proj.weight"  # present in every diffusers WanTransformer3DModel
NESTED_PREFERENCE = ("generator_ema", "generator", "model")  # official .pt: EMA first (what the demo loads)
WRAPPER_SEGMENTS = re.compile(r"(^|\.)(?:_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
SHARD_INDEX = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_FILE = "diffusion_pytorch_model.safetensors"

# ComfyUI native AR marker. The value format is inferred from third-party ComfyUI code that passes
# metadata {"config": json.dumps({"transformer": {"causal_ar": True}})} to
# comfy.sd.load_diffusion_model_state_dict; no repackaged Comfy-Org file was inspected (reference
# comfyui.md §11: "exact value format UNCERTAIN").
COMFY_AR_CONFIG = {"transformer": {"causal_ar": True}}

# One table of Wan <-> diffusers `WanTransformer3DModel` name fragments (selfforcing.md §6.3), used in
# both directions. Fragments ending in "." are module prefixes, the others whole tensor names.
DIFFUSERS_TOP = (
    ("patch_embedding.", "patch_embedding."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
)
DIFFUSERS_BLOCK = (  # after "blocks.{i}."
    ("modulation", "scale_shift_table"),
    ("self_attn.q.", "attn1.to_q."),
    ("self_attn.k.", "attn1.to_k."),
    ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."),
    ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."),
    ("cross_attn.k.", "attn2.to_k."),
    ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."),
    ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("norm3.", "norm2."),  # Wan's affine cross-attention norm is diffusers' norm2
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
)

class CheckpointError(WeightsError):
    """A checkpoint file cannot be read as a Wan2.1 DiT."""


# ---------------------------------------------------------------------------------------------------
# Expected parameters


def wan_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of a Wan2.1 DiT with official names, in module order (selfforcing.md §1.3)."""
    d, f = cfg.dim, cfg.ffn_dim
    pt, ph, pw = cfg.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, cfg.in_dim, pt, ph, pw),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.text_dim),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
    }
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        shapes[b + "modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            if attn == "cross_attn" and cfg.cross_attn_norm:
                shapes[b + "norm3.weight"] = (d,)
                shapes[b + "norm3.bias"] = (d,)
            for proj in ("q", "k", "v", "o"):
                shapes[f"{b}{attn}.{proj}.weight"] = (d, d)
                shapes[f"{b}{attn}.{proj}.bias"] = (d,)
            if cfg.qk_norm:
                shapes[f"{b}{attn}.norm_q.weight"] = (d,)
                shapes[f"{b}{attn}.norm_k.weight"] = (d,)
            if attn == "cross_attn" and cfg.model_type == "i2v":
                for proj in ("k_img", "v_img"):
                    shapes[f"{b}cross_attn.{proj}.weight"] = (d, d)
                    shapes[f"{b}cross_attn.{proj}.bias"] = (d,)
                if cfg.qk_norm:
                    shapes[f"{b}cross_attn.norm_k_img.weight"] = (d,)
        shapes[b + "ffn.0.weight"] = (f, d)
        shapes[b + "ffn.0.bias"] = (f,)
        shapes[b + "ffn.2.weight"] = (d, f)
        shapes[b + "ffn.2.bias"] = (d,)
    shapes["head.head.weight"] = (cfg.out_dim * pt * ph * pw, d)
    shapes["head.head.bias"] = (cfg.out_dim * pt * ph * pw,)
    shapes["head.modulation"] = (1, 2, d)
    if cfg.model_type == "i2v":  # MLP from 1280-d CLIP image features (Wan I2V; detection only)
        shapes.update({
            "img_emb.proj.0.weight": (1280,), "img_emb.proj.0.bias": (1280,),
            "img_emb.proj.1.weight": (1280, 1280), "img_emb.proj.1.bias": (1280,),
            "img_emb.proj.3.weight": (d, 1280), "img_emb.proj.3.bias": (d,),
            "img_emb.proj.4.weight": (d,), "img_emb.proj.4.bias": (d,),
        })
    return shapes


def _describe(cfg: ModelConfig) -> str:
    return (f"Wan2.1 {cfg.model_type} DiT (dim {cfg.dim}, {cfg.num_layers} layers, ffn {cfg.ffn_dim}, "
            f"{cfg.num_heads} heads)")


def check_state_dict(sd: dict, cfg: ModelConfig, source: str = "state dict") -> None:
    """Raise CheckpointError naming missing / unexpected keys and shape mismatches against `cfg`."""
    files.check_state_dict(sd, wan_param_shapes(cfg), source, f"a {_describe(cfg)}", CheckpointError)
    kinds = [k for k, v in sd.items() if not v.is_floating_point()]
    if kinds:  # casting them would run a model of rounded or 0/1 "weights"
        raise CheckpointError(f"{source}: {len(kinds)} integer or boolean tensors where weights are floating "
                              f"point, e.g. {kinds[0]!r} is {str(sd[kinds[0]].dtype).replace('torch.', '')}; "
                              "this is not a trained checkpoint (or a conversion damaged it)")


# ---------------------------------------------------------------------------------------------------
# Key layouts


def _rename(key: str, to_diffusers: bool) -> str | None:
    """Map one key between Wan and diffusers names; None when the table has no entry for it."""
    m = re.match(r"(blocks\.\d+\.)(.*)", key)
    head, rest, table = (m.group(1), m.group(2), DIFFUSERS_BLOCK) if m else ("", key, DIFFUSERS_TOP)
    for wan, diffusers in table:
        src, dst = (wan, diffusers) if to_diffusers else (diffusers, wan)
        if rest == src or (src.endswith(".") and rest.startswith(src)):
            return head + dst + rest[len(src):]
    return None


def _rename_all(sd: dict, to_diffusers: bool, source: str) -> dict:
    out, unmapped = {}, []
    for k, v in sd.items():
        new = _rename(k, to_diffusers)
        if new is None:
            unmapped.append(k)
        else:
            out[new] = v
    if unmapped:
        direction = "Wan -> diffusers" if to_diffusers else "diffusers -> Wan"
        raise CheckpointError(f"{source}: {len(unmapped)} key(s) have no {direction} mapping: {few(unmapped)} "
                              "(only the Wan2.1 T2V DiT is supported)")
    return out


def wan_to_diffusers(sd: dict) -> dict:
    """Rename bare Wan keys to diffusers `WanTransformer3DModel` names (tensors are shared, not copied)."""
    return _rename_all(sd, True, "state dict")


def diffusers_to_wan(sd: dict, source: str = "state dict") -> dict:
    """Rename diffusers `WanTransformer3DModel` keys to bare Wan keys (tensors are shared, not copied)."""
    return _rename_all(sd, False, source)


def _foreign_hint(keys) -> str:
    """Say what a non-DiT state dict looks like and where it belongs, or '' if unknown."""
    found = files.identify(keys)
    if found is None or found[0] == "checkpoint":
        return ""
    action = "apply it to a loaded model" if found[0] == "lora" else "load it with the matching loader"
    return f"; it looks like {found[1]} - put it in {found[2]} and {action}"


def _find_prefix(keys, anchor: str, source: str) -> str | None:
    """The prefix in front of `anchor` (e.g. 'model.diffusion_model.'), '' for bare keys, None if absent."""
    prefixes = {k[: -len(anchor)] for k in keys if k == anchor or k.endswith("." + anchor)}
    if len(prefixes) > 1:
        raise CheckpointError(f"{source}: holds {len(prefixes)} DiTs under the prefixes {few(sorted(prefixes))}; "
                              "extract one of them first")
    return prefixes.pop() if prefixes else None


def _bare_wan_keys(sd: dict, source: str) -> tuple[dict, str]:
    """Strip wrapper segments and the model prefix, dequantise fp8, undo diffusers names -> (sd, layout)."""
    sd = {WRAPPER_SEGMENTS.sub(r"\1", k): v for k, v in sd.items()}
    layout = "wan"
    prefix = _find_prefix(sd, WAN_ANCHOR, source)
    if prefix is None:
        prefix = _find_prefix(sd, DIFFUSERS_ANCHOR, source)
        layout = "diffusers"
    if prefix is None:
        raise CheckpointError(
            f"{source}: not a Wan2.1 DiT: none of its {len(sd)} keys ends in {WAN_ANCHOR!r} (Wan names) or "
            f"{DIFFUSERS_ANCHOR!r} (diffusers names); first keys: {few(sorted(sd))}{_foreign_hint(sd)}")
    sd = _dequantize_fp8({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    if layout == "diffusers":
        sd = diffusers_to_wan(sd, source)
    return sd, (f"{layout}, prefix {prefix!r}" if prefix else layout)


def _dequantize_fp8(sd: dict) -> dict:
    """Dequantise ComfyUI scaled fp8 (formats.md §1): weight = fp8 weight * per-tensor scale.

    Handles the legacy `<m>.scale_weight` and the mixed-precision `<m>.weight_scale` names, drops
    activation scales and the `scaled_fp8` marker, and casts unscaled fp8 tensors up. Output dtype is
    the file's dominant non-fp8 float dtype.
    """
    fp8 = {torch.float8_e4m3fn, torch.float8_e5m2}
    scale_suffixes = (".scale_weight", ".weight_scale")
    dropped = (".scale_input", ".input_scale", ".comfy_quant")
    if not any(v.dtype in fp8 for v in sd.values()) and not any(k.endswith(scale_suffixes) for k in sd):
        return sd
    plain = [v.dtype for k, v in sd.items()
             if v.is_floating_point() and v.dtype not in fp8 and not k.endswith(scale_suffixes) and k != "scaled_fp8"]
    target = Counter(plain).most_common(1)[0][0] if plain else torch.float32
    out = {}
    for k, v in sd.items():
        if k == "scaled_fp8" or k.endswith(dropped) or k.endswith(scale_suffixes):
            continue
        scale = next((sd[k[: -len(".weight")] + s] for s in scale_suffixes
                      if k.endswith(".weight") and k[: -len(".weight")] + s in sd), None)
        if scale is not None:
            v = v.to(torch.float32) * scale.to(torch.float32)
        out[k] = v.to(target) if v.dtype in fp8 or scale is not None else v
    return out


# ---------------------------------------------------------------------------------------------------
# Containers


def _read_sharded(index_path: Path) -> tuple[dict, dict]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: not a valid shard index (expected JSON with a 'weight_map' "
                              f"from tensor name to shard file): {e}") from e
    sd, meta = {}, {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard!r} listed in the index is missing "
                                  f"(looked for {shard_path})")
        part, part_meta = files.read_safetensors(shard_path, CheckpointError)
        sd.update(part)
        meta.update(part_meta)
    missing = sorted(set(weight_map) - set(sd))
    if missing:
        raise CheckpointError(f"{index_path}: {len(missing)} tensor(s) listed in the index are in no shard: "
                              f"{few(missing)}")
    return sd, meta


def _read_torch(path: Path) -> tuple[dict, dict]:
    """torch.load with weights_only=True; pick the generator out of the official nested dict."""
    obj = files.load_torch_file(path, CheckpointError)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    picked = next((name for name in NESTED_PREFERENCE if isinstance(obj.get(name), dict)), None)
    meta = {"sf_source_entry": picked} if picked else {}
    sd = obj[picked] if picked else obj
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        nested = sorted(k for k, v in obj.items() if isinstance(v, dict))
        raise CheckpointError(f"{path}: no tensors found; top-level keys {few(sorted(map(str, obj)))}; nested dicts "
                              f"{nested or 'none'}; expected a state dict or one of {list(NESTED_PREFERENCE)}")
    return tensors, meta


def _resolve(path: Path) -> Path:
    """A folder means its shard index or its single diffusion-model file."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if not path.is_dir():
        return path
    for name in (SHARD_INDEX, SINGLE_FILE):
        if (path / name).is_file():
            return path / name
    candidates = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(f"{path}: folder holds {len(candidates)} candidate checkpoint files "
                          f"({few(p.name for p in candidates)}); expected {SHARD_INDEX!r}, {SINGLE_FILE!r} "
                          "or exactly one .safetensors file")


def load_state_dict(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read any supported checkpoint into (bare Wan2.1 state dict, metadata).

    `metadata` is the file's safetensors header metadata (e.g. `sf_stream`, `sf_model`, `config`) plus
    `sf_source_layout`, a short description of the layout found, and for `.pt` files
    `sf_source_entry` (which nested dict was used).
    """
    path = _resolve(Path(path))
    name = path.name.lower()
    if name.endswith(".index.json"):
        sd, meta = _read_sharded(path)
    elif name.endswith(".safetensors") or files.is_safetensors(path):
        sd, meta = files.read_safetensors(path, CheckpointError)
    elif name.endswith(".gguf"):
        raise CheckpointError(f"{path}: GGUF files are not supported; use a safetensors or .pt checkpoint")
    else:
        sd, meta = _read_torch(path)
    sd, layout = _bare_wan_keys(sd, str(path))
    meta["sf_source_layout"] = layout
    return sd, meta


# ---------------------------------------------------------------------------------------------------
# Model


def model_config_from(sd: dict, meta: dict, source: str) -> ModelConfig:
    """The ModelConfig stored in `sf_model` metadata, else inferred from shapes."""
    if "sf_model" in meta:
        try:
            return ModelConfig.from_json(meta["sf_model"])
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{source}: invalid 'sf_model' metadata {meta['sf_model']!r}: {e}") from e
    return infer_config(sd, source)


def dominant_dtype(sd: dict) -> torch.dtype:
    """The floating dtype holding the most parameters."""
    counts = Counter()
    for v in sd.values():
        counts[v.dtype] += v.numel()
    return counts.most_common(1)[0][0]


def load_model(path, dtype: torch.dtype | None = None, device="cpu",
               stream_config: StreamConfig | None = None):
    """Build a CausalWanModel from any supported checkpoint -> (model, stream_config).

    The model is created on the meta device and takes the loaded tensors directly (`assign=True`),
    so weights are held once. `dtype=None` keeps the file's dominant dtype. The stream config is the
    argument, else the file's `sf_stream` metadata, else the official defaults.
    """
    sd, meta = load_state_dict(path)
    return model_from_state_dict(sd, meta, str(path), dtype, device, stream_config)


def model_from_state_dict(sd: dict, meta: dict, source: str, dtype: torch.dtype | None = None, device="cpu",
                          stream_config: StreamConfig | None = None):
    """`load_model` for tensors already in memory (e.g. a ComfyUI MODEL's weights), in any layout
    `load_state_dict` reads, with that layout's `meta` ({} if none) -> (model, stream_config)."""
    sd, _ = _bare_wan_keys(sd, source)
    cfg = model_config_from(sd, meta, source)
    check_state_dict(sd, cfg, source)
    dtype = dtype or dominant_dtype(sd)
    for k in list(sd):  # convert one tensor at a time: peak memory is the file plus one tensor
        sd[k] = sd[k].to(device=device, dtype=dtype)
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    stream = stream_config or StreamConfig.from_metadata(meta) or StreamConfig()
    return model, stream


# ---------------------------------------------------------------------------------------------------
# Writers


def _as_state_dict(sd_or_model) -> dict:
    if isinstance(sd_or_model, torch.nn.Module):
        return sd_or_model.state_dict()
    return dict(sd_or_model)


def our_metadata(cfg: ModelConfig, stream_config: StreamConfig | None) -> dict[str, str]:
    """Metadata we write into every safetensors file."""
    meta = {"sf_format_version": FORMAT_VERSION, "sf_model": cfg.to_json()}
    if stream_config is not None:
        meta.update(stream_config.to_metadata())
    return meta


def fsync_dir(folder) -> None:
    """Make a rename in `folder` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_safetensors_atomic(tensors: dict, path, metadata: dict[str, str]) -> None:
    """Write safetensors through a temporary file in the same folder, fsync it, os.replace, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.touch()
        mode = tmp.stat().st_mode & 0o777  # what the umask gives a new file; safetensors itself writes 0600
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:  # the bytes reach the disk before the name does
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _validated(sd_or_model, model_config: ModelConfig | None, path) -> tuple[dict, ModelConfig]:
    sd = _as_state_dict(sd_or_model)
    cfg = model_config or infer_config(sd, f"state dict to write to {path}")
    check_state_dict(sd, cfg, f"state dict to write to {path}")
    return sd, cfg


def save_safetensors(sd_or_model, path, stream_config: StreamConfig | None = None,
                     model_config: ModelConfig | None = None) -> Path:
    """Write bare Wan keys with `sf_format_version`, `sf_model` and (if given) `sf_stream` metadata."""
    sd, cfg = _validated(sd_or_model, model_config, path)
    write_safetensors_atomic(sd, path, our_metadata(cfg, stream_config))
    return Path(path)


def save_comfy_native_ar(sd_or_model, path, stream_config: StreamConfig | None = None,
                         model_config: ModelConfig | None = None) -> Path:
    """Write a file ComfyUI's native AR loader runs as `WAN21_CausalAR`: bare Wan keys + `config` metadata.

    Our own metadata is written too (ComfyUI ignores it), so the file round-trips through
    `load_model` with its stream config. See COMFY_AR_CONFIG for the uncertainty of the marker format.
    """
    sd, cfg = _validated(sd_or_model, model_config, path)
    meta = our_metadata(cfg, stream_config)
    meta["config"] = json.dumps(COMFY_AR_CONFIG)
    write_safetensors_atomic(sd, path, meta)
    return Path(path)


def diffusers_config(cfg: ModelConfig) -> dict:
    """`config.json` of a diffusers `WanTransformer3DModel` with the shape of `cfg`."""
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_dim,
        "out_channels": cfg.out_dim,
        "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim,
        "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.num_layers,
        "cross_attn_norm": cfg.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads" if cfg.qk_norm else None,
        "eps": cfg.eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
    }


def save_diffusers(sd_or_model, folder, stream_config: StreamConfig | None = None,
                   model_config: ModelConfig | None = None) -> Path:
    """Write a diffusers transformer folder: `config.json` + `diffusion_pytorch_model.safetensors`."""
    folder = Path(folder)
    sd, cfg = _validated(sd_or_model, model_config, folder)
    if cfg.model_type != "t2v":
        raise CheckpointError(f"{folder}: only the T2V DiT can be written with diffusers names")
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors_atomic(wan_to_diffusers(sd), folder / SINGLE_FILE, our_metadata(cfg, stream_config))
    tmp = folder / "config.json.tmp"
    tmp.write_text(json.dumps(diffusers_config(cfg), indent=2))
    os.replace(tmp, folder / "config.json")
    return folder / SINGLE_FILE
