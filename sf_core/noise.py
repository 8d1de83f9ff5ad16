"""Injectable noise sources. All randomness of a stream goes through one of these.

A noise source is any callable `noise(chunk_index, step, shape, dtype, device) -> Tensor`, where step 0
is the chunk's initial noise and step j ≥ 1 the re-noise before denoising step j.
"""
from __future__ import annotations

import hashlib
from typing import Protocol

import torch


class NoiseSource(Protocol):
    def __call__(self, chunk_index: int, step: int, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device | str) -> torch.Tensor: ...


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
        out = torch.empty(shape, dtype=torch.float32)
        for b in range(shape[0]):
            g = torch.Generator().manual_seed(_mix(self.seed + b, chunk_index, step))
            out[b] = torch.randn(shape[1:], generator=g)
        return out.to(device=device, dtype=dtype)

    def spec(self) -> dict:
        return {"kind": self.kind, "seed": self.seed}

    def __repr__(self) -> str:
        return f"SeededNoise(seed={self.seed})"


def noise_from_spec(spec: dict | None) -> NoiseSource | None:
    if spec and spec.get("kind") == SeededNoise.kind:
        return SeededNoise(spec["seed"])
    return None
