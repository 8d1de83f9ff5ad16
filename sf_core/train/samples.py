"""Periodic sample clips, rendered by the same `StreamingPipeline` the nodes use.

Latents (normalised `[B, F, C, h, w]`) go to `<folder>/latents.safetensors`; with a decoder callback
(`decode_fn(latents) -> frames [B, T, 3, H, W] in [-1, 1]`), one mp4 per prompt as well.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sf_core.weights.checkpoint import write_safetensors_atomic
from sf_core.config import StreamConfig
from sf_core.pipeline import StreamingPipeline


@torch.no_grad()
def render_samples(generator, stream_config: StreamConfig, context: torch.Tensor, prompts: list[str],
                   latent_height: int, latent_width: int, num_chunks: int, seed: int, folder: Path, ctx,
                   decode_fn=None, fps: float = 16.0) -> torch.Tensor | None:
    """Collective under FSDP (every rank runs the sharded generator); rank 0 writes. Returns the latents."""
    if ctx.strategy != "fsdp" and not ctx.is_main:
        return None
    pipe = StreamingPipeline(generator, stream_config, device=ctx.device)
    state = pipe.start(context, latent_height * 8, latent_width * 8, seed=seed,
                       max_frames=num_chunks * stream_config.chunk_frames)
    latents = torch.cat([chunk.latents for chunk in pipe.stream(state, num_chunks)], dim=1)  # [B, F, C, h, w]
    if not ctx.is_main:
        return latents
    folder = Path(folder)
    write_safetensors_atomic({"latents": latents.float().cpu()}, folder / "latents.safetensors",
                             {"prompts": json.dumps(prompts), "seed": str(seed)})
    if decode_fn is not None:
        from sf_core.media.recording import VideoRecorder, channels_last
        frames = decode_fn(latents)  # [B, T, 3, H, W]
        for i, clip in enumerate(frames):
            with VideoRecorder(folder / f"sample_{i}.mp4", fps) as rec:
                rec.write(channels_last(clip))
    return latents
