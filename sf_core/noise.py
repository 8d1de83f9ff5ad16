"""Injectable noise sources. All randomness of a stream goes through one of these.

A noise source is any callable `noise(chunk_index, step, shape, dtype, device) -> Tensor`, where step 0
is the chunk's initial noise and step j ≥ 1 the re-noise before denoising step j.

Seeded noise is drawn on the CPU (so CPU and GPU runs see the same values) into pinned memory and copied
without blocking: the host never waits for the GPU's queue to draw the next step's noise, it keeps
enqueueing work while the GPU runs (no host sync in the chunk loop, tests/test_pipeline.py).
"""
from __future__ import annotations

import hashlib
from typing import Protocol

import torch


class NoiseSource(Protocol):
    def __call__(self, chunk_index: int, step: int, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device | str) -> torch.Tensor: ...


def host_to_device(x: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    """Copy host float32 `x` to `device` without making the host wait for the device's queue (pinned source,
    non-blocking copy; PyTorch's pinned allocator keeps the buffer until the copy is done), then cast there."""
    if torch.device(device).type == "cpu":
        return x.to(dtype)
    return x.to(device, non_blocking=True).to(dtype)


def _mix(*parts: int) -> int:
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SeededNoise:
    """Each (sample, chunk, step) gets its own CPU generator seeded from (seed + sample, chunk, step).

    So any chunk can be replayed or forked exactly, a batch of B equals B single runs with seeds
    seed..seed+B−1, and CPU and GPU runs see the same noise.
    """

    kind = "seeded"

    def __init__(self, seed: int):
        self.seed = int(seed)

    def __call__(self, chunk_index, step, shape, dtype, device):
        return host_to_device(self._host(chunk_index, step, shape, torch.device(device)), device, dtype)

    def _host(self, chunk_index: int, step: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The float32 noise on the host; in pinned memory when it is bound for a CUDA device."""
        out = torch.empty(shape, dtype=torch.float32, pin_memory=device.type == "cuda")
        for b in range(shape[0]):
            g = torch.Generator().manual_seed(_mix(self.seed + b, chunk_index, step))
            out[b] = torch.randn(shape[1:], generator=g)
        return out

    def spec(self) -> dict:
        return {"kind": self.kind, "seed": self.seed}

    def __repr__(self) -> str:
        return f"SeededNoise(seed={self.seed})"


def noise_from_spec(spec: dict | None) -> NoiseSource | None:
    if spec and spec.get("kind") == SeededNoise.kind:
        return SeededNoise(spec["seed"])
    return None
