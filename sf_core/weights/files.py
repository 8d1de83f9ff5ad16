"""Weight files, whatever model they hold: what a file is (by its keys), reading one safely, and checking a
state dict against the shapes a model expects. The one place these rules live; model-specific loaders
(`weights.checkpoint`, `vae`, `text.encoder`) build on them."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from torch import nn


class WeightsError(ValueError):
    """A weight file is missing, unreadable, or does not fit the model it is loaded into."""


# What a weight file holds, judged by one key: (key suffix, kind, description, ComfyUI folder).
SIGNATURES = (
    ("head.modulation", "checkpoint", "a Wan2.1 DiT", "models/diffusion_models"),
    ("condition_embedder.time_proj.weight", "checkpoint", "a diffusers Wan DiT", "models/diffusion_models"),
    ("decoder.upsamples.0.upsamples.0.residual.2.weight", "wan22_vae", "a Wan2.2 VAE", "models/vae"),
    ("decoder.middle.0.residual.0.gamma", "vae", "a Wan2.1 VAE", "models/vae"),
    ("decoder.mid_block.resnets.0.conv1.weight", "diffusers_vae", "a diffusers VAE", "models/vae"),
    ("decoder.22.bias", "taehv", "a TAEHV tiny decoder", "models/vae_approx"),
    ("latent_std", "toy_autoencoder", "the toy world's autoencoder", "a toy model bundle folder"),
    ("shared.weight", "text_encoder", "a umT5/T5 text encoder", "models/text_encoders"),
    ("encoder.final_layer_norm.weight", "text_encoder", "a umT5/T5 text encoder", "models/text_encoders"),
    ("token_embedding.weight", "text_encoder", "the official Wan umT5 text encoder", "models/text_encoders"),
    ("visual.proj", "clip_vision", "a CLIP vision model", "models/clip_vision"),
    ("vision_model.post_layernorm.weight", "clip_vision", "a CLIP vision model", "models/clip_vision"),
)
LORA_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", "lora_unet_")


def identify(keys: Iterable[str]) -> tuple[str, str, str] | None:
    """(kind, description, ComfyUI folder) of a state dict judged by its keys; None if unrecognised."""
    keys = list(keys)
    for suffix, kind, text, folder in SIGNATURES:
        if any(k == suffix or k.endswith("." + suffix) for k in keys):
            return kind, text, folder
    if any(m in k for k in keys for m in LORA_MARKERS):
        return "lora", "a LoRA", "models/loras"
    return None


def sniff(path: str | Path) -> tuple[str | None, str]:
    """(kind, description) of a safetensors file from its header alone; (None, "") for other formats."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            return None, ""
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # noqa: BLE001 - a damaged header is reported by the real loader
        return None, str(exc)
    found = identify(keys)
    if found is None:
        return "unknown", f"an unrecognised safetensors file (first keys: {', '.join(sorted(keys)[:3]) or 'none'})"
    return found[0], found[1]


def load_torch_file(path: str | Path, error: type[Exception] = WeightsError):
    """`torch.load(weights_only=True)` (memory-mapped for zip files) with one-line errors; the loaded object."""
    with open(path, "rb") as f:
        head = f.read(2)
    is_zip = zipfile.is_zipfile(path)
    if head == b"PK" and not is_zip:
        raise error(f"{path}: cannot read it, a torch zip archive without its directory: the file is truncated or "
                    "corrupt, download it again")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "global" in line.lower()),
                      next((line for line in lines if "nsupported" in line), lines[0] if lines else "?"))
        raise error(f"refusing to load {path}: torch.load(weights_only=True) refused it ({reason}): the file is "
                    "damaged, or it holds Python objects other than tensors, which could execute code on load. Only "
                    "weights-only files are accepted: download it again, or convert a file you trust to "
                    "safetensors in a separate environment") from exc
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, AttributeError) as exc:
        raise error(f"{path}: cannot read it as a PyTorch checkpoint, it is truncated or corrupt ({exc}); "
                    "download it again") from exc


def read_safetensors(path: str | Path, error: type[Exception] = WeightsError) -> tuple[dict, dict]:
    """(tensors, header metadata) of a safetensors file, with a one-line error for a damaged one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise error(f"{path}: cannot read safetensors file, it is truncated or corrupt ({exc}); "
                    "download it again") from exc


def is_safetensors(path: str | Path) -> bool:
    """Content sniffing for renamed files: 8-byte little-endian header size, then a JSON object."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or of a plain-dict `.pth`/`.pt` (loaded with `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors" or is_safetensors(path):
        return read_safetensors(path)[0]
    sd = load_torch_file(path)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: expected a plain dict of tensors (a state dict), got {type(sd).__name__}")
    return sd


def few(keys: Iterable, n: int = 4) -> str:
    """'a', 'b', 'c', 'd' and 3 more."""
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def shapes_of(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_state_dict(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]] | nn.Module,
                     source: str, model: str = "the model", error: type[Exception] = WeightsError) -> None:
    """Raise `error` naming the file, the missing / unexpected keys and the wrong shapes if `sd` does not fit.

    `expected`: parameter name → shape, or a module whose state dict gives them; `model` describes it.
    """
    if isinstance(expected, nn.Module):
        expected = shapes_of(expected)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [(k, tuple(sd[k].shape), s) for k, s in expected.items() if k in sd and tuple(sd[k].shape) != s]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        shown = ", ".join(f"{k!r} {list(expected[k])}" for k in missing[:4])
        problems.append(f"{len(missing)} missing key(s): {shown}" + (f" and {len(missing) - 4} more"
                                                                      if len(missing) > 4 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {few(unexpected)}")
    for k, found, want in wrong[:4]:
        problems.append(f"key {k!r} has shape {list(found)}, expected {list(want)}")
    if len(wrong) > 4:
        problems.append(f"{len(wrong) - 4} more shape mismatch(es)")
    raise error(f"{source}: does not match {model} ({len(expected)} tensors expected, {len(sd)} found): "
                + "; ".join(problems))
