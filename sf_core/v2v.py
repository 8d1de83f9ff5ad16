"""Streaming video-to-video: input frames → streaming encoder → noised to a strength → denoised with the KV cache.

Strength rule. `strength` s ∈ [0, 1] is a flow-matching noise level σ (x_σ = (1 − σ)·x + σ·ε). A chunk starts
at the first denoising step whose σ is at or below s (the nearest step at or below it): the input's latents
are noised to that step's σ with the very noise text-to-video would draw there, and the remaining steps run
as usual, attending to the KV cache. s = 1 starts at step 0 (σ = 1, pure noise): exactly text-to-video.
When s is below every step's σ no step runs and the chunk is the input's latents (decoded: the input's
reconstruction). The released 4-step schedule at shift 5 has σ = 1, 0.9375, 0.8333, 0.625.

Frames. A chunk of n latents takes the frames its decoder gives back (`chunk_frame_counts`: Wan VAE / TAEHV
9, then 12; toy pixels n, n). Frames may arrive in calls of any size; they are buffered until a chunk is
complete, so the output does not depend on how the input was split. `finish()` pads a trailing partial
chunk by repeating the last input frame and marks how many of its frames are real, so the output has
exactly as many frames as the input. The input needs at least one full first chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from sf_core.media.timing import chunk_frame_counts
from sf_core.pipeline import Chunk, PromptSwitch, StreamingPipeline
from sf_core.state import StreamState
from sf_core.vae.encoders import ChunkEncoder


def step_sigmas(pipe: StreamingPipeline) -> list[float]:
    """σ of each denoising step of `pipe`, in order (descending)."""
    return [float(s) for s in pipe.scheduler.sigma(torch.tensor(pipe.timesteps))]


def check_strength(strength: float) -> float:
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must lie in [0, 1] (0 = the input's reconstruction, 1 = text-to-video), "
                         f"got {strength}")
    return strength


def first_step(pipe: StreamingPipeline, strength: float) -> int:
    """Index of the first step with σ ≤ strength; `len(steps)` (no step) when the strength is below them all."""
    strength = check_strength(strength)
    return next((j for j, s in enumerate(step_sigmas(pipe)) if s <= strength + 1e-6), len(pipe.timesteps))


@dataclass
class V2VChunk:
    chunk: Chunk
    frames: int       # pixel frames of this chunk that come from the input; drop the rest (padding)


class VideoToVideo:
    """Turn a stream of input frames into denoised chunks on `state` (a stream started with `pipe.start`)."""

    def __init__(self, pipe: StreamingPipeline, state: StreamState, encoder: ChunkEncoder, strength: float,
                 prompts: dict[int, PromptSwitch] | None = None):
        self.pipe, self.state, self.encoder = pipe, state, encoder
        self.first_step = first_step(pipe, strength)
        self.prompts = prompts or {}
        self.counts = chunk_frame_counts(pipe.config.chunk_frames, encoder.temporal_stride)
        stride = encoder.spatial_stride
        self.size = (state.latent_height * stride, state.latent_width * stride)
        self.frames_in = 0            # input frames received so far
        self.chunks_made = 0
        self._pending: torch.Tensor | None = None   # [B, t, 3, H, W] frames of the chunk being filled

    def _needed(self) -> int:
        return self.counts[0] if self.chunks_made == 0 else self.counts[1]

    def _check(self, frames: torch.Tensor) -> None:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"input frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        if tuple(frames.shape[-2:]) != self.size:
            raise ValueError(f"input frames are {frames.shape[-1]}x{frames.shape[-2]} (WxH), the stream is "
                             f"{self.size[1]}x{self.size[0]}; resize the video or start the stream at its size")
        if frames.shape[0] != self.state.batch:
            raise ValueError(f"input batch is {frames.shape[0]}, the stream's is {self.state.batch}")

    def push(self, frames: torch.Tensor, callback: Callable[[int, int], None] | None = None) -> list[V2VChunk]:
        """Add frames `[B, T, 3, H, W]` in [-1, 1]; return the chunks they complete (possibly none)."""
        self._check(frames)
        self.frames_in += frames.shape[1]
        frames = frames.to(self.pipe.device, torch.float32)
        self._pending = frames if self._pending is None else torch.cat([self._pending, frames.to(self._pending)], 1)
        out = []
        while self._pending is not None and self._pending.shape[1] >= self._needed():
            n = self._needed()
            piece, rest = self._pending[:, :n], self._pending[:, n:]
            self._pending = rest if rest.shape[1] else None
            out.append(V2VChunk(self._denoise(piece, callback), n))
        return out

    def finish(self, callback: Callable[[int, int], None] | None = None) -> list[V2VChunk]:
        """Denoise the trailing partial chunk (padded with its last frame); refuse an input shorter than a chunk."""
        if self.chunks_made == 0 and self.frames_in < self.counts[0]:
            raise ValueError(f"the input has {self.frames_in} frame(s); video-to-video needs at least "
                             f"{self.counts[0]} (one chunk of {self.pipe.config.chunk_frames} latent frames)")
        if self._pending is None:
            return []
        real, n = self._pending.shape[1], self._needed()
        pad = self._pending[:, -1:].expand(-1, n - real, -1, -1, -1)
        piece, self._pending = torch.cat([self._pending, pad], 1), None
        return [V2VChunk(self._denoise(piece, callback), real)]

    def stream(self, batches: Iterable[torch.Tensor]) -> Iterator[V2VChunk]:
        """Every chunk of an input given as batches of frames, the padded last one included."""
        for frames in batches:
            yield from self.push(frames)
        yield from self.finish()

    def _denoise(self, frames: torch.Tensor, callback) -> Chunk:
        switch = self.prompts.get(self.state.chunk_index)
        if switch is not None:
            self.pipe.switch_prompt(self.state, switch.context, switch.recache)
        source = None  # strength 1 is text-to-video: the input is not even encoded
        if self.first_step > 0:
            source = self.encoder.encode_chunk(frames).to(self.pipe.dtype)  # [B, n, C, h, w]
        chunk = self.pipe.step(self.state, callback, source=source, first_step=self.first_step)
        self.chunks_made += 1
        return chunk
