"""Optional fp8 (e4m3) weights for the DiT's transformer-block linear layers. Opt-in; changes outputs.

Per-tensor scaling: scale = max|W| / 448 (the e4m3 maximum), W ≈ fp8(W / scale) · scale.

* `simulate_fp8_weights_(model)` rounds the weights through fp8 in place and keeps the model dtype —
  runs anywhere, for measuring the quality cost against the unquantised model on the same seed.
* `to_fp8_linears_(model)` replaces the layers by `Fp8Linear`, which stores fp8 weights (half the bytes
  of bf16) and multiplies with `torch._scaled_mm` (fp8 tensor cores on sm89+/H100), quantising
  activations per tensor on the fly.
Only the block linears (self/cross attention q, k, v, o and the FFN) are touched; embeddings, the
time path and the head stay in the model dtype.
"""
from __future__ import annotations

import torch
import torch.nn as nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


def fp8_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> (fp8 tensor, float32 per-tensor scale) with x ≈ q.float() * scale."""
    scale = (x.detach().abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def block_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every nn.Linear inside `model.blocks`."""
    found = []
    for block in model.blocks:
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    found.append((parent, name, child))
    return found


@torch.no_grad()
def simulate_fp8_weights_(model: nn.Module) -> int:
    """Round every block linear's weight through per-tensor fp8 in place; returns the number of layers."""
    layers = block_linears(model)
    for _, _, lin in layers:
        q, scale = fp8_quantize(lin.weight)
        lin.weight.copy_((q.float() * scale).to(lin.weight.dtype))
    return len(layers)


class Fp8Linear(nn.Module):
    """y = x Wᵀ + b with W stored as fp8 + a per-tensor scale, x quantised per tensor at run time."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype):
        super().__init__()
        q, scale = fp8_quantize(weight)
        self.register_buffer("weight_fp8", q)        # [out, in]
        self.register_buffer("weight_scale", scale)  # []
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.out_dtype = out_dtype
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> "Fp8Linear":
        return cls(lin.weight.detach(), lin.bias, lin.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xq, xs = fp8_quantize(x.reshape(-1, self.in_features))
        bias = None if self.bias is None else self.bias.to(self.out_dtype)
        y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=xs, scale_b=self.weight_scale, bias=bias,
                             out_dtype=self.out_dtype)
        return y.view(*lead, self.out_features)


def to_fp8_linears_(model: nn.Module) -> int:
    """Swap every block linear for an `Fp8Linear` in place; returns the number of layers swapped.
    Needs `torch._scaled_mm` for the device (CUDA sm89+, or recent CPU builds) and feature sizes that
    are multiples of 16."""
    layers = block_linears(model)
    for parent, name, lin in layers:
        if lin.in_features % 16 or lin.out_features % 16:
            raise ValueError(f"fp8 layer {name}: sizes {lin.in_features}×{lin.out_features} must be multiples of 16")
        setattr(parent, name, Fp8Linear.from_linear(lin))
    return len(layers)
