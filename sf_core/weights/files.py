"""Read a weight file (`.safetensors` or a `torch.save` pickle) and check it against a module."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class WeightsError(ValueError):
    """A weight file is missing, unreadable, or does not fit the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or of a plain-dict `.pth`/`.pt` (loaded with `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is reported the same way
        kind = "safetensors" if path.suffix == ".safetensors" else "a torch state dict"
        raise WeightsError(f"{path}: cannot read as {kind}: {exc}") from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: expected a plain dict of tensors (a state dict), got {type(sd).__name__}")
    return sd


def check_state_dict(module: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Raise `WeightsError` naming the file, the keys and the expected shapes if `sd` does not fit `module`."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    if missing:
        shown = ", ".join(f"'{k}' {list(expected[k])}" for k in missing[:5])
        raise WeightsError(f"{source}: {len(missing)} key(s) missing, e.g. {shown}")
    unexpected = sorted(k for k in sd if k not in expected)
    if unexpected:
        raise WeightsError(f"{source}: {len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
    wrong = [k for k in expected if tuple(sd[k].shape) != expected[k]]
    if wrong:
        shown = ", ".join(f"'{k}' has {list(sd[k].shape)}, expected {list(expected[k])}" for k in wrong[:5])
        raise WeightsError(f"{source}: {len(wrong)} tensor(s) with the wrong shape: {shown}")
