"""A short fingerprint of a DiT's weights, to tell whether a saved stream belongs to the loaded model.

Sampled, not hashed in full: 16 evenly spaced values of each tensor outside the transformer-block
linears, rounded to bfloat16, with names and shapes. Identical for the same checkpoint loaded in
float32, bfloat16 or float16 and with fp8 or LoRA-modified block linears (a variant of the same
model); different for any other trained weights (every tensor differs after training). At 1.3B it
reads 16 values of ~500 tensors: one gather per tensor and one device-to-host copy.
"""
from __future__ import annotations

import hashlib
import re

import torch
from torch import nn

SAMPLES = 16
BLOCK_LINEAR = re.compile(r"blocks\.\d+\.(?:(?:self_attn|cross_attn)\.[qkvo]|ffn\.\d+)\.")


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> str:
    """16 hex digits identifying `model`'s weights (see the module docstring)."""
    names, samples = [], []
    for name, t in model.state_dict().items():
        if BLOCK_LINEAR.match(name) or t.numel() == 0 or not t.is_floating_point():
            continue
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, min(SAMPLES, flat.numel()), device=flat.device).long()
        samples.append(flat[idx].float().to(torch.bfloat16).float())
        names.append(f"{name}{list(t.shape)}")
    digest = hashlib.sha256("\n".join(names).encode())
    if samples:
        digest.update(torch.cat(samples).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
