"""The small interface every streaming latent decoder offers, and a loader that picks one by file content."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from sf_core.vae.taehv import StreamingTAEHVDecoder, taehv_from_state_dict
from sf_core.vae.wan import StreamingDecoder, vae_from_state_dict
from sf_core.weights.files import WeightsError, read_state_dict


class ChunkDecoder(Protocol):
    """Turns a stream of normalised latent chunks into pixel frames, keeping its own causal state.

    `spatial_stride` / `temporal_stride`: pixels per latent pixel and frames per latent frame (8 and 4 for
    the Wan VAE and TAEHV); `sf_core.media.timing.decoder_frame_counts` turns them into frames per chunk.
    """

    spatial_stride: int
    temporal_stride: int

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised `[B, f, C, h, w]` → frames `[B, T, 3, H, W]` in [-1, 1] (3 → 9 first, then 12)."""

    def reset(self) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def clone(self) -> "ChunkDecoder": ...


def load_chunk_decoder(path: str | Path, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> ChunkDecoder:
    """A streaming decoder for a Wan2.1 VAE file or a TAEHV (`taew2_1` / `lighttaew2_1`) file."""
    sd = read_state_dict(path)
    if "decoder.22.bias" in sd:
        return StreamingTAEHVDecoder(taehv_from_state_dict(sd, str(path), device, dtype))
    if "decoder.middle.0.residual.0.gamma" in sd:
        return StreamingDecoder(vae_from_state_dict(sd, str(path), device, dtype))
    raise WeightsError(f"{path}: neither a Wan2.1 VAE (key 'decoder.middle.0.residual.0.gamma') nor a TAEHV "
                       "tiny decoder (key 'decoder.22.bias')")
