"""The exact pixel latent space's decoder (reproduction profiles): latents are the pixels (space-to-depth ×2),
one frame each."""
from __future__ import annotations

import torch

from .render import LATENT_CHANNELS, LATENT_FACTOR, from_latent, to_latent


class PixelDecoder:
    """A stateless `ChunkDecoder`: f latent frames → f video frames, `[B, f, 12, h, w]` → `[B, f, 3, 2h, 2w]`."""

    spatial_stride = LATENT_FACTOR
    temporal_stride = 1
    latent_channels = LATENT_CHANNELS
    normalised_latents = False   # ComfyUI LATENT outputs carry these latents as they are

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        return from_latent(latents.float()) * 2 - 1  # in [-1, 1]

    def reset(self) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def clone(self) -> "PixelDecoder":
        return self


class PixelEncoder:
    """The exact inverse of `PixelDecoder` (stateless): `[B, f, 3, 2h, 2w]` in [-1, 1] → `[B, f, 12, h, w]`."""

    spatial_stride = LATENT_FACTOR
    temporal_stride = 1

    def encode_chunk(self, frames: torch.Tensor) -> torch.Tensor:
        return to_latent((frames.float() + 1) / 2)

    def reset(self) -> None: ...
