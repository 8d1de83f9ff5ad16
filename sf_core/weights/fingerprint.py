"""A short fingerprint of a DiT's weights, to tell whether a saved stream belongs to the loaded model.

Sampled, not hashed in full: 4 evenly spaced values of each tensor outside the transformer-block
linears, as bfloat16, after a hash of their shapes. `same_weights` accepts two fingerprints whose
values agree to 1/64 (relative), so the same checkpoint loaded in float32, bfloat16 or float16, behind
a speed wrapper, with fp8 or LoRA-modified block linears still counts as the same model; any other
trained weights differ in nearly every value. At 1.3B: 225 of the 825 tensors → 900 values (3.6 kB of
hex), one gather per tensor and one device-to-host copy.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np
import torch
from torch import nn

SAMPLES = 4
TOLERANCE = 1 / 64
BLOCK_LINEAR = re.compile(r"blocks\.\d+\.(?:(?:self_attn|cross_attn)\.[qkvo]|ffn\.\d+)\.")


def _dit(model: nn.Module) -> nn.Module:
    """The CausalWanModel inside a wrapper (e.g. sf_core.speed's FastForward), else `model`."""
    from sf_core.model import CausalWanModel
    return next((m for m in model.modules() if isinstance(m, CausalWanModel)), model)


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> str:
    """'<8 hex digits of the shapes>:<bfloat16 samples in hex>' (see the module docstring)."""
    shapes, samples = [], []
    for name, t in _dit(model).state_dict().items():
        if BLOCK_LINEAR.search(name) or t.numel() == 0 or not t.is_floating_point():
            continue
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, min(SAMPLES, flat.numel()), device=flat.device).long()
        samples.append(flat[idx].float())
        shapes.append(str(list(t.shape)))
    values = torch.cat(samples).cpu().to(torch.bfloat16) if samples else torch.zeros(0, dtype=torch.bfloat16)
    bits = values.view(torch.int16).numpy().astype("<i2").tobytes().hex()
    return hashlib.sha256(" ".join(shapes).encode()).hexdigest()[:8] + ":" + bits


def _values(fingerprint: str) -> tuple[str, torch.Tensor] | None:
    shapes, _, bits = fingerprint.partition(":")
    try:
        raw = np.frombuffer(bytes.fromhex(bits), dtype="<i2").astype(np.int16)
    except ValueError:
        return None
    return shapes, torch.from_numpy(raw.copy()).view(torch.bfloat16).float()


def same_weights(a: str, b: str) -> bool:
    """Whether two fingerprints are of the same weights, up to dtype rounding."""
    x, y = _values(a), _values(b)
    if x is None or y is None or x[0] != y[0] or x[1].shape != y[1].shape:
        return False
    (_, u), (_, v) = x, y
    return bool(((u - v).abs() <= torch.maximum(u.abs(), v.abs()) * TOLERANCE + 1e-6).all())
