"""umT5 linear layers that keep a scaled-fp8 file's weights in fp8 (half the bytes of bf16 in memory).

Each call dequantises the layer's weight — `weight.float() · scale_weight`, cast to the input's dtype —
exactly as loading the file dequantised would have, so outputs are bitwise those of the dequantised
encoder; only one layer's weight exists in the compute dtype at a time. umT5-XXL: the 4.6 B linear
weights take 4.6 GB instead of 9.3 GB in bf16 (the embedding stays in the compute dtype).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

SCALE_SUFFIX = "scale_weight"
LINEAR_WEIGHT = re.compile(r"^blocks\.\d+\.(attn\.[qkvo]|ffn\.(gate\.0|fc1|fc2))\.weight$")  # official names


class StoredFp8Linear(nn.Module):
    """A bias-free linear whose weight is stored in fp8 with a per-tensor float32 scale."""

    def __init__(self, out_features: int, in_features: int, weight_dtype: torch.dtype, scale_shape=()):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=weight_dtype), requires_grad=False)
        self.register_buffer(SCALE_SUFFIX, torch.ones(scale_shape, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, (self.weight.float() * self.scale_weight).to(x.dtype))


def scale_key(weight_key: str) -> str:
    return weight_key[: -len("weight")] + SCALE_SUFFIX


def swap_in_fp8_linears(model: nn.Module, state_dict) -> None:
    """Replace every linear whose `<name>.scale_weight` is in `state_dict` by a `StoredFp8Linear` shaped like
    the stored tensors (call on a meta-device model, then load the state dict with `assign=True`)."""
    for key in [k for k in state_dict if k.endswith("." + SCALE_SUFFIX)]:
        name = key[: -len("." + SCALE_SUFFIX)]
        parent_name, _, attr = name.rpartition(".")
        weight = state_dict[name + ".weight"]
        layer = StoredFp8Linear(*weight.shape, weight.dtype, tuple(state_dict[key].shape))
        setattr(model.get_submodule(parent_name), attr, layer)
