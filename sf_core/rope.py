"""3-axis rotary position embedding of Wan2.1 (temporal, height, width), computed in float64.

Channel pairs (2i, 2i+1) of a head are one complex number; the head's complex pairs are split
[t, h, w] = [d/2 - 2*(d//6), d//6, d//6] (22/21/21 for d = 128). The official code reads angles from a
1024-row table; we evaluate the same formula for any integer position, which is bit-identical for
positions 0..1023 and keeps working past the table end (see docs/api.md, "Positions past 1024").

Opt-in fast mode (`rope="fast"` on the model): the same angles, stored as float32 (cos, sin) pairs and
applied with real float32 arithmetic (no float64, no complex dtype; compiler-friendly). Its error against
the exact path is below bf16 resolution (tests/speed/test_speed.py, docs/performance.md).
"""
from __future__ import annotations

import torch

THETA = 10000.0
TABLE_POSITIONS = 1024  # rows of the official table; positions beyond it are extrapolated by formula


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real channels per axis (t, h, w): 44/42/42 for head_dim 128."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _inv_freq(axis_dim: int, device) -> torch.Tensor:
    return 1.0 / torch.pow(THETA, torch.arange(0, axis_dim, 2, dtype=torch.float64, device=device).div(axis_dim))


def axis_angles(positions: torch.Tensor, axis_dim: int) -> torch.Tensor:
    """Complex rotations [len(positions), axis_dim // 2] in complex128."""
    angles = torch.outer(positions.to(torch.float64), _inv_freq(axis_dim, positions.device))
    return torch.polar(torch.ones_like(angles), angles)


def grid_freqs(frames: int, height: int, width: int, head_dim: int, start_frame: int = 0,
               device=None) -> torch.Tensor:
    """Rotations for a token grid laid out frame-major, then rows, then columns: [F*h*w, 1, head_dim//2]."""
    dt, dh, dw = axis_dims(head_dim)
    ft = axis_angles(torch.arange(start_frame, start_frame + frames, device=device), dt)
    fh = axis_angles(torch.arange(height, device=device), dh)
    fw = axis_angles(torch.arange(width, device=device), dw)
    freqs = torch.cat([
        ft.view(frames, 1, 1, -1).expand(frames, height, width, -1),
        fh.view(1, height, 1, -1).expand(frames, height, width, -1),
        fw.view(1, 1, width, -1).expand(frames, height, width, -1),
    ], dim=-1)
    return freqs.reshape(frames * height * width, 1, -1)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, L, heads, head_dim] by freqs [L, 1, head_dim//2]; float64 multiply, cast back."""
    b, length, n, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, length, n, d // 2, 2))
    return torch.view_as_real(xc * freqs).flatten(3).to(x.dtype)


def shift_temporal(k: torch.Tensor, frames: int, head_dim: int) -> torch.Tensor:
    """Re-index post-RoPE keys [..., heads, head_dim] by `frames` temporal positions (may be negative)."""
    dt, _, _ = axis_dims(head_dim)
    rot = axis_angles(torch.tensor([frames], device=k.device), dt)[0]  # [dt // 2]
    shape = k.shape
    kc = torch.view_as_complex(k.to(torch.float64).reshape(*shape[:-1], head_dim // 2, 2)).clone()
    kc[..., : dt // 2] *= rot
    return torch.view_as_real(kc).flatten(-2).to(k.dtype)


def fast_freqs(freqs: torch.Tensor) -> torch.Tensor:
    """Exact complex128 rotations [..., d/2] -> float32 (cos, sin) pairs [..., d/2, 2] for `apply_rope_fast`."""
    return torch.view_as_real(freqs).to(torch.float32)


def apply_rope_fast(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, L, heads, head_dim] by cos_sin [L, 1, head_dim//2, 2] in float32, cast back."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = cos_sin[..., 0], cos_sin[..., 1]
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(3).to(x.dtype)


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Exact path for complex `freqs` (grid_freqs), fast path for float (cos, sin) pairs (fast_freqs)."""
    return apply_rope(x, freqs) if freqs.is_complex() else apply_rope_fast(x, freqs)
