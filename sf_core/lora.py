"""LoRAs at inference: merged into the weights (no cost per chunk) or unmerged (strengths may change between chunks).

Several LoRAs add up: W' = W + Σ_i s_i·scale_i·B_i·A_i (computed in float32, cast to the weight's dtype).
A strength of 0 leaves a layer untouched (bit-identical). Files are read by `sf_core.weights.lora.read_lora`.
Unmerged, each layer's output gets Σ_i s_i·scale_i·(x·A_iᵀ)·B_iᵀ through a forward hook; the strengths live in one
device tensor updated in place, so compiled code and captured CUDA graphs see a change without recompiling or
re-capturing. When a LoRA touches the cross-attention K/V, a strength change invalidates the stream's cached
context K/V (`set_strengths(.., state)`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sf_core.weights.lora import LoRALayer

Layers = dict[str, LoRALayer]        # layer name -> LoRA layer (LoRA.layers or LoRA.text_layers)
CONTEXT_KV = (".cross_attn.k", ".cross_attn.v")


def _summed_deltas(loras: Sequence[tuple[Layers, float]]) -> dict[str, torch.Tensor]:
    deltas: dict[str, torch.Tensor] = {}
    for layers, strength in loras:
        if strength == 0:
            continue
        for name, layer in layers.items():
            d = layer.delta() * strength
            deltas[name] = d if name not in deltas else deltas[name] + d
    return deltas


@torch.no_grad()
def merge(module: nn.Module, loras: Sequence[tuple[Layers, float]], keep: bool = True) -> dict[str, torch.Tensor]:
    """Add the LoRAs to `module`'s weights in place; return the replaced weights (empty with `keep=False`)."""
    backup = {}
    for name, delta in _summed_deltas(loras).items():
        weight = module.get_submodule(name).weight
        if keep:
            backup[name] = weight.detach().clone()
        weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return backup


@torch.no_grad()
def restore(module: nn.Module, backup: dict[str, torch.Tensor]) -> None:
    """Undo `merge` exactly."""
    for name, weight in backup.items():
        module.get_submodule(name).weight.copy_(weight)


class UnmergedLoRA:
    """Forward hooks adding the LoRAs to their layers' outputs; `strengths[i]` belongs to `loras[i]`."""

    def __init__(self, module: nn.Module, loras: Sequence[Layers], strengths: Sequence[float]):
        if len(loras) != len(strengths):
            raise ValueError(f"{len(loras)} LoRAs but {len(strengths)} strengths")
        self.strengths = [float(s) for s in strengths]
        self.names = sorted({name for layers in loras for name in layers})
        p = next(module.parameters())
        self._values = torch.tensor(self.strengths, dtype=p.dtype, device=p.device)   # [n] read by every hook
        self._handles = []
        for name in self.names:
            linear = module.get_submodule(name)
            w = linear.weight
            entries = [(i, layers[name].down.to(w.device, w.dtype), (layers[name].up * layers[name].scale).to(
                w.device, w.dtype)) for i, layers in enumerate(loras) if name in layers]
            self._handles.append(linear.register_forward_hook(self._hook(entries)))

    def _hook(self, entries):
        def add(module, inputs, out):
            x = inputs[0]
            for i, down, up in entries:
                out = out + (x @ down.t() @ up.t()) * self._values[i]
            return out
        return add

    @property
    def touches_context_kv(self) -> bool:
        return any(name.endswith(CONTEXT_KV) for name in self.names)

    def set_strengths(self, strengths: Sequence[float], state=None) -> None:
        """New strengths from the next forward pass on; pass the stream's `state` so that cached cross-attention
        K/V are recomputed when this LoRA changes them."""
        strengths = [float(s) for s in strengths]
        if len(strengths) != len(self.strengths):
            raise ValueError(f"expected {len(self.strengths)} strengths, got {len(strengths)}")
        if strengths != self.strengths and state is not None and self.touches_context_kv:
            state.cache.cross_ready = False
        self.strengths = strengths
        self._values.copy_(torch.tensor(strengths, dtype=self._values.dtype))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
