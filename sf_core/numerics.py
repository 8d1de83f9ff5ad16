"""Non-finite numbers in a stream: detected once per chunk, reported with their likely cause.

`check_finite` costs one reduction and one host sync per tensor checked (at 1.3B, 832×480: the
chunk's latents [1, 3, 16, 60, 104] = 0.3 M values, its frames 12×3×480×832 = 14 M values). Only when
something is not finite are the weights scanned to name the cause.
"""
from __future__ import annotations

import torch
from torch import nn


class NonFiniteError(RuntimeError):
    """NaN or Inf appeared in a stream; `str()` names where and the likely cause."""


def weights_of(component) -> nn.Module:
    """The module holding a component's weights: itself, or a chunk decoder's `vae` / `model` (an empty
    module for weightless components such as the toy pixel decoder)."""
    if isinstance(component, nn.Module):
        return component
    found = (getattr(component, name, None) for name in ("vae", "model"))
    return next((m for m in found if isinstance(m, nn.Module)), nn.Module())


def first_nonfinite(module: nn.Module) -> str | None:
    """Name of the first parameter / buffer of `module` holding NaN or Inf, else None."""
    for name, t in module.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite(what: str, x: torch.Tensor, culprits: dict[str, nn.Module], dtype: torch.dtype) -> None:
    """Raise `NonFiniteError` if `x` holds NaN/Inf. `culprits` maps a file / component description to
    the module whose weights could be the cause (scanned only on failure)."""
    if bool(torch.isfinite(x).all()):
        return
    for source, module in culprits.items():
        bad = first_nonfinite(module)
        if bad is not None:
            raise NonFiniteError(f"{what} holds NaN/Inf: {source} has non-finite values in {bad!r}; the file is "
                                 "damaged or was saved after a diverged training run, so use another copy")
    hint = ("float16 overflows in this model: use bfloat16 or float32 (--dtype, or the loader's dtype)"
            if dtype == torch.float16 else
            "the weights are finite, so check the sampling settings (--shift, --steps) and the prompt embedding")
    raise NonFiniteError(f"{what} holds NaN/Inf; {hint}")
