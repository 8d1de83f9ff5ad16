"""Low-rank adapters on the generator's attention and FFN linears; merged back into plain Wan weights.

W' = W + (alpha / rank)·B·A with A [rank, in] (Kaiming-uniform init) and B [out, rank] (zeros), so a
fresh adapter leaves the model unchanged. The base weights are frozen.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged_weight(self) -> torch.Tensor:
        delta = (self.lora_b.float() @ self.lora_a.float()) * self.scale
        return (self.base.weight.float() + delta).to(self.base.weight.dtype)


def inject_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> list[str]:
    """Freeze `model` and wrap every `blocks.<i>.<target>` nn.Linear in a LoRALinear; return the wrapped names."""
    model.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        parts = name.split(".")
        if len(parts) < 3 or parts[0] != "blocks" or ".".join(parts[2:]) not in targets:
            continue
        if not isinstance(module, nn.Linear):
            raise TypeError(f"LoRA target {name} is a {type(module).__name__}, not nn.Linear")
        parent = model.get_submodule(".".join(parts[:-1]))
        setattr(parent, parts[-1], LoRALinear(module, rank, alpha))
        wrapped.append(name)
    if not wrapped:
        raise ValueError(f"no LoRA target matched {list(targets)}; expected names such as 'self_attn.q', 'ffn.0'")
    return wrapped


def merge_lora_state_dict(sd: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A full state dict with `X.base.weight`, `X.lora_a`, `X.lora_b` -> plain `X.weight` (bare Wan keys)."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".lora_a") or key.endswith(".lora_b"):
            continue
        if ".base." in key:
            prefix = key.rsplit(".base.", 1)[0]
            name = key.rsplit(".", 1)[1]
            if name == "weight" and f"{prefix}.lora_a" in sd:
                a, b = sd[f"{prefix}.lora_a"].float(), sd[f"{prefix}.lora_b"].float()
                value = (value.float() + (b @ a) * scale).to(value.dtype)
            key = f"{prefix}.{name}"
        out[key] = value
    return out


def export_lora(generator_sd: dict[str, torch.Tensor], ema_sd: dict[str, torch.Tensor] | None, path,
                alpha: float, rank: int, dtype: torch.dtype = torch.bfloat16):
    """Write only the adapters (EMA values where present) as a LoRA file: `X.lora_a`, `X.lora_b`, metadata
    `sf_lora` = {"alpha", "rank"}; `sf_core.weights.lora.read_lora` (CLI `--lora`, node SF LoRA) reads it."""
    import json

    from sf_core.weights.checkpoint import write_safetensors_atomic
    from sf_core.weights.lora import META_KEY
    adapters = {k: (ema_sd or {}).get(k, v).to(dtype).contiguous() for k, v in generator_sd.items()
                if k.endswith((".lora_a", ".lora_b"))}
    if not adapters:
        raise ValueError("this checkpoint has no LoRA adapters (train with lora.enabled=true)")
    write_safetensors_atomic(adapters, path, {META_KEY: json.dumps({"alpha": alpha, "rank": rank})})
    return path
