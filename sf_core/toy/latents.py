"""The two latent spaces of the toy world, behind one small interface used by training and evaluation.

- :class:`PixelSpace` — exact space-to-depth ×2 of the pixels (12 channels, one latent frame per frame): no
  decoder error enters a metric; the Table-2 reproduction profiles use it.
- :class:`AutoencoderSpace` — the learned causal autoencoder (:mod:`sf_core.toy.autoencoder`, stride 8 × 4,
  Wan's frame rule); the embedded default model uses it.

Both map pixel clips ``[B, T, 3, H, W]`` in [0, 1] to latents ``[B, F, C, h, w]`` and back.
"""
from __future__ import annotations

import torch

from .autoencoder import SPATIAL_STRIDE, TEMPORAL_STRIDE, ToyAutoencoder, ToyAutoencoderDecoder
from .pixels import PixelDecoder
from .render import LATENT_CHANNELS, LATENT_FACTOR, from_latent, to_latent


class PixelSpace:
    channels, spatial_stride, temporal_stride = LATENT_CHANNELS, LATENT_FACTOR, 1
    name = "exact space-to-depth ×2 pixels"

    def pixel_frames(self, latent_frames: int) -> int:
        return latent_frames

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return to_latent(pixels)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return from_latent(latents.float())

    def chunk_decoder(self) -> PixelDecoder:
        return PixelDecoder()


class AutoencoderSpace:
    spatial_stride, temporal_stride = SPATIAL_STRIDE, TEMPORAL_STRIDE
    name = "learned causal autoencoder (stride 8 × 4)"

    def __init__(self, model: ToyAutoencoder):
        self.model = model
        self.channels = model.config.latent_channels

    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + TEMPORAL_STRIDE * (latent_frames - 1)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        device = self.model.latent_mean.device
        return self.model.encode(pixels.to(device) * 2 - 1).to(pixels.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        device = self.model.latent_mean.device
        return ((self.model.decode(latents.to(device)) + 1) / 2).to(latents.device)

    def chunk_decoder(self) -> ToyAutoencoderDecoder:
        return ToyAutoencoderDecoder(self.model)


PIXELS = PixelSpace()
