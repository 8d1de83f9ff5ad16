"""Exponential moving average of the generator's trainable weights (fp32 shadow).

Created at `start_step` from the current weights (official behaviour), updated after every generator
optimizer step: shadow ← decay·shadow + (1 − decay)·param. With FSDP2 the shadow is a DTensor with the
parameter's sharding, so each rank keeps only its shard; `state_dict()` gathers full tensors.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32, copy=True) for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().to(torch.float32), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (gathered) fp32 tensors on the CPU, keyed by parameter name."""
        return {name: _full(t).cpu() for name, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(sd))
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameter(s), e.g. {missing[:3]}")
        for name, t in self.shadow.items():
            full = sd[name].to(torch.float32)
            if hasattr(t, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor
                t.copy_(distribute_tensor(full.to(t.device_mesh.device_type), t.device_mesh, t.placements))
            else:
                t.copy_(full)

    @classmethod
    def restore(cls, model: nn.Module, decay: float, sd: dict[str, torch.Tensor]) -> "EMA":
        ema = cls(model, decay)
        ema.load_state_dict(sd)
        return ema
