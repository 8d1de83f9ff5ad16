"""The streaming generator: one chunk of latent frames at a time, each yielded as soon as it is denoised.

One chunk: draw noise → for each step t_j: v = model(x, t_j, ctx, cache, start_frame), x0 = x − σ_j·v,
re-noise x0 to t_{j+1} with fresh noise → after the last step, one cache-update pass on x0 at
`context_noise` (t = 0) so later chunks attend to the clean chunk → yield x0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .cache import KVCache
from .config import StreamConfig
from .model import CausalWanModel
from .noise import NoiseSource, SeededNoise
from .scheduler import FlowMatchScheduler
from .state import StreamState
from sf_core.weights.fingerprint import weights_fingerprint


@dataclass
class Chunk:
    index: int                 # chunk number in the stream (prefill excluded)
    start_frame: int           # absolute latent frame of latents[:, 0]
    latents: torch.Tensor      # [B, f, C, h, w], normalised latent space


@dataclass
class PromptSwitch:
    context: torch.Tensor      # [B, L, text_dim]
    recache: bool = False      # re-encode the cached window under the new prompt (LongLive-style)


class StreamingPipeline:
    def __init__(self, model: CausalWanModel, stream_config: StreamConfig | None = None, device=None,
                 dtype: torch.dtype | None = None, spatial_stride: int = 8):
        """`spatial_stride`: pixels per latent pixel of the decoder in use (8 for the Wan VAE)."""
        self.model = model
        self.spatial_stride = spatial_stride
        self.config = stream_config or StreamConfig()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype or model.dtype
        self.scheduler = FlowMatchScheduler(self.config.shift)
        steps = list(self.config.denoising_steps)
        self.timesteps = self.scheduler.warp(steps) if self.config.warp_denoising_step else [float(s) for s in steps]
        self.scheduler.tables(self.device)  # the σ tables move to the device once, not inside the chunk loop
        self._timestep_tensors: dict[tuple, torch.Tensor] = {}

    # -- set-up ------------------------------------------------------------------------------------------
    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Pixel size -> latent size (decoder stride; the patch needs a latent size divisible by it)."""
        _, ph, pw = self.model.config.patch_size
        m = self.spatial_stride * ph
        if height % m or width % (self.spatial_stride * pw) or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {m} pixels, got "
                             f"{height}×{width}; nearest valid size: "
                             f"{max(m, round(height / m) * m)}×{max(m, round(width / m) * m)}")
        return height // self.spatial_stride, width // self.spatial_stride

    def start(self, context: torch.Tensor, height: int, width: int, seed: int = 0,
              noise: NoiseSource | None = None, initial_latents: torch.Tensor | None = None,
              max_frames: int = 21) -> StreamState:
        """A fresh stream for `context` [B, L, text_dim] at height × width pixels.

        `max_frames` sizes a global cache (rolling caches hold `window` frames). `initial_latents`
        (normalised [B, F0, C, h, w]) are pushed through the cache first (image-to-video, extension).
        """
        h, w = self.latent_size(height, width)
        cfg = self.config
        if context.dim() != 3 or context.shape[-1] != self.model.config.text_dim:
            raise ValueError(f"context must be [B, L, {self.model.config.text_dim}], got {tuple(context.shape)}")
        context = context.to(self.device, self.dtype)
        cache = KVCache.allocate(self.model.config, context.shape[0], self.model.frame_tokens(h, w),
                                 max_frames, cfg.window, cfg.sink, self.dtype, self.device)
        state = StreamState(cache, context, h, w, noise or SeededNoise(seed),
                            info={"model": self.model.config.to_json(), "stream": cfg.to_metadata()["sf_stream"],
                                  "weights": weights_fingerprint(self.model)})
        if initial_latents is not None:
            self.prefill(state, initial_latents)
        return state

    @torch.no_grad()
    def prefill(self, state: StreamState, latents: torch.Tensor) -> None:
        """Push clean latents [B, F0, C, h, w] through the cache (a remainder block first, then chunks)."""
        if latents.shape[-2:] != (state.latent_height, state.latent_width):
            raise ValueError(f"initial latents are {tuple(latents.shape[-2:])} (h, w), the stream is "
                             f"{(state.latent_height, state.latent_width)}")
        latents = latents.to(self.device, self.dtype)
        n, f0 = self.config.chunk_frames, latents.shape[1]
        bounds = ([0] if f0 % n == 0 else [0, f0 % n]) + list(range(f0 % n + n if f0 % n else n, f0 + 1, n))
        for a, b in zip(bounds[:-1], bounds[1:]):
            self._cache_pass(state, latents[:, a:b], state.next_frame)
            self._remember(state, latents[:, a:b], state.next_frame)
            state.next_frame += b - a

    # -- generation --------------------------------------------------------------------------------------
    def _t(self, state: StreamState, frames: int, value: float) -> torch.Tensor:
        """Timesteps [B, frames] = value: one kept tensor per (B, frames, value), never written to, so the
        model's time-embedding memo recognises it on every pass (5 values per stream)."""
        key = (state.batch, frames, value)
        if key not in self._timestep_tensors:
            self._timestep_tensors[key] = torch.full((state.batch, frames), value, dtype=torch.float32,
                                                     device=self.device)
        return self._timestep_tensors[key]

    def _cache_pass(self, state: StreamState, x0: torch.Tensor, start: int) -> None:
        t = self._t(state, x0.shape[1], self.config.context_noise)
        self.model(x0, t, state.context, state.cache, start)

    @torch.no_grad()
    def step(self, state: StreamState, callback: Callable[[int, int], None] | None = None,
             commit: bool = True, source: torch.Tensor | None = None, first_step: int = 0) -> Chunk:
        """Generate the next chunk and commit it to the cache.

        `callback(step, num_steps)` runs after every denoising step (progress, interruption checks).
        `commit=False` skips the cache-update pass — only for the very last chunk of a stream that
        will never be continued (saves one of five passes); the state is then not extendable.
        `source` (video-to-video, normalised [B, f, C, h, w]): start from these latents noised to step
        `first_step` (`sf_core.v2v.first_step`) instead of pure noise; past the last step the chunk is `source`.
        """
        if state.info.get("final"):
            raise RuntimeError("this stream ended with commit=False (its last chunk was never cached); "
                               "it cannot be continued — keep commit=True for streams you want to extend")
        cfg, k, start = self.config, state.chunk_index, state.next_frame
        shape = (state.batch, cfg.chunk_frames, self.model.config.in_dim, state.latent_height, state.latent_width)
        if not 0 <= first_step <= len(self.timesteps) or (source is None and first_step == len(self.timesteps)):
            raise ValueError(f"first_step {first_step} outside 0..{len(self.timesteps) - (source is None)}")
        x0 = x = state.noise(k, first_step, shape, self.dtype, self.device) if first_step < len(self.timesteps) else None
        if source is not None:
            if tuple(source.shape) != shape:
                raise ValueError(f"source latents are {tuple(source.shape)}, the chunk is {shape}")
            x0 = source.to(self.device, self.dtype)
            if x is not None:
                x = self.scheduler.add_noise(x0, x, self._t(state, cfg.chunk_frames, self.timesteps[first_step]))
        for j in range(first_step, len(self.timesteps)):
            t = self.timesteps[j]
            tt = self._t(state, cfg.chunk_frames, t)
            x0 = self.scheduler.to_x0(x, self.model(x, tt, state.context, state.cache, start), tt)
            if j + 1 < len(self.timesteps):
                nxt = self._t(state, cfg.chunk_frames, self.timesteps[j + 1])
                x = self.scheduler.add_noise(x0, state.noise(k, j + 1, shape, self.dtype, self.device), nxt)
            if callback is not None:
                callback(j + 1, len(self.timesteps))
        if commit:
            self._cache_pass(state, x0, start)
        else:
            state.info["final"] = True
        self._remember(state, x0, start)
        state.next_frame += cfg.chunk_frames
        state.chunk_index += 1
        return Chunk(k, start, x0)

    @torch.no_grad()
    def commit(self, state: StreamState, chunk: Chunk) -> None:
        """Run the cache-update pass that `step(commit=False)` skipped for `chunk` (the stream's last), so
        the stream can be continued after all; the cache then equals that of `step(commit=True)`."""
        if not state.info.get("final") or chunk.start_frame + chunk.latents.shape[1] != state.next_frame:
            raise RuntimeError("commit() takes the last chunk of a stream made with step(commit=False)")
        self._cache_pass(state, chunk.latents, chunk.start_frame)
        del state.info["final"]

    def stream(self, state: StreamState, num_chunks: int | None = None,
               prompts: dict[int, PromptSwitch] | None = None, commit_last: bool = True) -> Iterator[Chunk]:
        """Yield chunks until `num_chunks` more have been made (None: until the caller stops).
        `commit_last=False` skips the last chunk's cache-update pass (see `step`)."""
        made = 0
        while num_chunks is None or made < num_chunks:
            switch = (prompts or {}).get(state.chunk_index)
            if switch is not None:
                self.switch_prompt(state, switch.context, switch.recache)
            yield self.step(state, commit=commit_last or num_chunks is None or made + 1 < num_chunks)
            made += 1

    # -- prompts -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def switch_prompt(self, state: StreamState, context: torch.Tensor, recache: bool = False) -> None:
        """Continue under a new prompt. With `recache`, the frames still in the cache are re-encoded under
        the new prompt (at their original positions), so the old prompt stops steering the window."""
        state.context = context.to(self.device, self.dtype)
        state.cache.cross_ready = False
        if not recache or state.history is None:
            return
        cache, starts = state.cache, state.info.get("block_starts", [])
        cache.reset()
        if state.sink_latents is not None:
            for a, b in _blocks(0, state.sink_latents.shape[1], starts):
                self._cache_pass(state, state.sink_latents[:, a:b], a)
        h0 = state.history_start
        cache.global_end = h0 * cache.frame_tokens  # continue at the window's first frame
        for a, b in _blocks(h0, h0 + state.history.shape[1], starts):
            self._cache_pass(state, state.history[:, a - h0:b - h0], a)

    def _remember(self, state: StreamState, x0: torch.Tensor, start: int) -> None:
        """Keep the clean latents still in the cache, and where their blocks start, so a prompt switch can
        re-cache them block by block exactly as they were first passed."""
        x0 = x0.detach()
        cfg = self.config
        state.info.setdefault("block_starts", []).append(start)
        have = 0 if state.sink_latents is None else state.sink_latents.shape[1]
        if have < cfg.sink:
            take = x0[:, : cfg.sink - have]
            state.sink_latents = take.clone() if state.sink_latents is None else torch.cat([state.sink_latents, take], 1)
            x0, start = x0[:, take.shape[1]:], start + take.shape[1]
            if x0.shape[1] == 0:
                return
        if state.history is None:
            state.history, state.history_start = x0.clone(), start
        else:
            state.history = torch.cat([state.history, x0], 1)
        keep = (cfg.window - cfg.sink) if cfg.window != -1 else state.cache.capacity // state.cache.frame_tokens
        if state.history.shape[1] > keep:
            drop = state.history.shape[1] - keep
            state.history = state.history[:, drop:]
            state.history_start += drop
        state.info["block_starts"] = [b for b in state.info["block_starts"] if b < cfg.sink or b >= state.history_start]


def _blocks(begin: int, end: int, starts: list[int]) -> list[tuple[int, int]]:
    """[begin, end) cut at the recorded block starts inside it."""
    cuts = sorted({begin, end} | {s for s in starts if begin < s < end})
    return list(zip(cuts[:-1], cuts[1:]))
