"""Few-step flow-matching scheduler (selfforcing.md §4).

σ grid: base σ_i = linspace(1, 0, 1001)[:-1], shifted σ' = s·σ / (1 + (s−1)·σ), timesteps = 1000·σ'
(float32, like the official tables). σ for any t is the grid entry nearest to t. x_t = (1−σ)·x0 + σ·ε,
x0 = x_t − σ·v (float64), v = ε − x0.
"""
from __future__ import annotations

from typing import Sequence

import torch


class FlowMatchScheduler:
    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000):
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        base = torch.linspace(1.0, 0.0, num_train_timesteps + 1)[:-1]
        self.sigmas = shift * base / (1 + (shift - 1) * base)      # [1000] float32, descending
        self.timesteps = self.sigmas * num_train_timesteps          # [1000] float32
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, sigmas) on `device`, copied there once: no host-to-device copy per call."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" and the tensors' "cuda:0" share one copy
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._on_device:
            self._on_device[device] = (self.timesteps.to(device), self.sigmas.to(device))
        return self._on_device[device]

    def warp(self, steps: Sequence[float]) -> list[float]:
        """Listed steps (e.g. 1000, 750, 500, 250) -> grid timesteps (1000, 937.5, 833.33, 625) at shift s."""
        table = torch.cat([self.timesteps, torch.zeros(1)])
        return [float(table[self.num_train_timesteps - int(round(s))]) for s in steps]

    def index(self, t: torch.Tensor) -> torch.Tensor:
        """Nearest grid index for each timestep in t (any shape)."""
        grid = self.tables(t.device)[0]
        flat = t.reshape(-1).to(grid.dtype)
        return torch.argmin((grid[None, :] - flat[:, None]).abs(), dim=1).view(t.shape)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Grid σ (float32) for timesteps t (any shape)."""
        return self.tables(t.device)[1][self.index(t)]

    @staticmethod
    def _expand(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """σ with shape [B] or [B, F] broadcast against x [B, F, C, H, W]."""
        return sigma.reshape(*sigma.shape, *([1] * (x.dim() - sigma.dim())))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(1 − σ)·x0 + σ·ε in float32, cast to the noise dtype. t: [B] or [B, F]."""
        s = self._expand(self.sigma(t), x0)
        return ((1 - s) * x0 + s * noise).to(noise.dtype)

    def to_x0(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = x_t − σ·v computed in float64, cast back to v's dtype."""
        s = self._expand(self.sigma(t).double(), x_t)
        return (x_t.double() - s * v.double()).to(v.dtype)

    def to_flow(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = (x_t − x0) / σ in float64, cast back to x0's dtype."""
        s = self._expand(self.sigma(t).double(), x_t)
        return ((x_t.double() - x0.double()) / s).to(x0.dtype)
