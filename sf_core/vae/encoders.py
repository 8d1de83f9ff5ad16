"""Streaming encoders (pixels → latents chunk by chunk, causal state kept across calls) for video-to-video.

Every encoder takes the frames its decoder twin gives back: with temporal stride s and n latents per
chunk, the stream's first chunk is `1 + s(n − 1)` frames, every later one `s·n` (Wan VAE and TAEHV: 9,
then 12; the toy pixels: n, n). Feeding a clip chunk by chunk equals encoding it at once.
"""
from __future__ import annotations

from typing import Protocol

import torch

from sf_core.vae.taehv import FRAMES_TO_TRIM, TAEHV, StreamingTAEHVDecoder, apply_blocks
from sf_core.vae.wan import StreamingDecoder, StreamingEncoder


class ChunkEncoder(Protocol):
    """Frames `[B, T, 3, H, W]` in [-1, 1] → normalised latents `[B, f, C, h, w]`, keeping its causal state."""

    spatial_stride: int
    temporal_stride: int

    def encode_chunk(self, frames: torch.Tensor) -> torch.Tensor: ...

    def reset(self) -> None: ...


class WanChunkEncoder(StreamingEncoder):
    """The Wan2.1 VAE's streaming encoder (its feature cache carried across chunks, like the decoder's)."""

    spatial_stride, temporal_stride = 8, 4


class StreamingTAEHVEncoder:
    """TAEHV's encoder chunk by chunk (MemBlock memory carried across chunks).

    The decoder drops its first 3 frames, so the stream's first chunk is front-padded with 3 copies of
    frame 0: 9 frames → 12 → 3 latents, then 12 → 3. Equals one pass over the padded clip.
    """

    spatial_stride, temporal_stride = 8, 4

    def __init__(self, model: TAEHV):
        if not model.has_encoder:
            raise RuntimeError("this TAEHV file has no encoder weights ('encoder.*' keys); use the full taew2_1 file "
                               "or the Wan2.1 VAE to encode")
        self.model = model
        self.memory: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.memory = {}

    @torch.no_grad()
    def encode_chunk(self, frames: torch.Tensor) -> torch.Tensor:
        if not self.memory:
            frames = torch.cat([frames[:, :1].expand(-1, FRAMES_TO_TRIM, -1, -1, -1), frames], dim=1)
        x = (frames.to(self.model.encoder[0].weight.dtype) + 1) / 2
        return apply_blocks(self.model.encoder, x, self.memory, "encoder").float()


def encoder_for(decoder) -> ChunkEncoder:
    """The streaming encoder that shares `decoder`'s network (Wan VAE, TAEHV or the toy pixels)."""
    from sf_core.toy.autoencoder import ToyAutoencoderDecoder, ToyAutoencoderEncoder
    from sf_core.toy.pixels import PixelDecoder, PixelEncoder
    if isinstance(decoder, StreamingDecoder):
        if not decoder.vae.has_encoder:
            raise RuntimeError("this Wan2.1 VAE file has no encoder weights ('encoder.*' keys); video-to-video "
                               "needs the full Wan2.1_VAE.pth / wan_2.1_vae.safetensors")
        return WanChunkEncoder(decoder.vae)
    if isinstance(decoder, StreamingTAEHVDecoder):
        return StreamingTAEHVEncoder(decoder.model)
    if isinstance(decoder, PixelDecoder):
        return PixelEncoder()
    if isinstance(decoder, ToyAutoencoderDecoder):
        return ToyAutoencoderEncoder(decoder.model)
    raise TypeError(f"no streaming encoder for a {type(decoder).__name__}; expected the Wan2.1 VAE, TAEHV or "
                    "a toy decoder")
