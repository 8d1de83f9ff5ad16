"""The two latent spaces of the toy world, behind one small interface used by training and evaluation.

- :class:`PixelSpace` — exact space-to-depth ×2 of the pixels (12 channels, one latent frame per frame): no
  decoder error enters a metric; the Table-2 reproduction profiles use it.
- :class:`AutoencoderSpace` — the learned causal autoencoder (:mod:`sf_core.toy.autoencoder`, stride 8 × 4,
  Wan's frame rule); the embedded default model uses it.

Both map pixel clips ``[B, T, 3, H, W]`` in [0, 1] to latents ``[B, F, C, h, w]`` and back.
"""
from __future__ import annotations

import torch

from sf_core.media.timing import chunk_frame_counts

from .autoencoder import SPATIAL_STRIDE, TEMPORAL_STRIDE, ToyAutoencoder
from .render import LATENT_CHANNELS, LATENT_FACTOR, from_latent, to_latent


class _Space:
    temporal_stride: int

    def pixel_frames(self, latent_frames: int) -> int:
        """Frames that `latent_frames` latents decode to from the start of a clip (the stream's frame rule)."""
        return chunk_frame_counts(latent_frames, self.temporal_stride)[0]

    def footprint(self, mask: torch.Tensor) -> torch.Tensor:
        """Pixel mask [B, T, H, W] -> the latent positions it touches [B, F, h, w] (bool): a latent frame stands
        for its pixel frames (the first alone, then `temporal_stride` each), a latent pixel for its
        `spatial_stride`² pixels."""
        m = mask.float()
        if self.temporal_stride > 1:
            m = torch.cat([m[:, :1], m[:, 1:].unflatten(1, (-1, self.temporal_stride)).amax(2)], 1)
        return torch.nn.functional.max_pool2d(m, self.spatial_stride) > 0


class PixelSpace(_Space):
    channels, spatial_stride, temporal_stride = LATENT_CHANNELS, LATENT_FACTOR, 1

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return to_latent(pixels)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return from_latent(latents.float())


class AutoencoderSpace(_Space):
    spatial_stride, temporal_stride = SPATIAL_STRIDE, TEMPORAL_STRIDE

    def __init__(self, model: ToyAutoencoder):
        self.model = model
        self.channels = model.config.latent_channels

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        device = self.model.latent_mean.device
        return self.model.encode(pixels.to(device) * 2 - 1).to(pixels.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        device = self.model.latent_mean.device
        return ((self.model.decode(latents.to(device)) + 1) / 2).to(latents.device)


PIXELS = PixelSpace()
