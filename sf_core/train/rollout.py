"""Self-rollout (Algorithm 1): the generator produces a training clip chunk by chunk with its own KV cache.

Per chunk, exactly like inference (selfforcing.md §4.3, §7.2): the denoising steps before the exit step
run without gradient (predict x0, re-noise with fresh noise to the next step), the exit step runs with
gradient and its x0 prediction is the chunk's output; then a no-grad cache-update pass at
`context_noise` writes the chunk's clean K/V (with `training_cache_noise` the official training σ≈0.005
re-noise first). Earlier chunks therefore reach the loss only as detached K/V.

The exit step is drawn from the shared generator (identical on every rank), and additionally
broadcast from rank 0 when a process group is initialised.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from ..scheduler import FlowMatchScheduler
from .rollout_cache import RolloutCache

# noise(chunk_index, step, shape, dtype, device) -> Tensor; step 0 = initial noise, j >= 1 = re-noise
# before step j, step len(steps) = the training cache-pass noise. Compatible with sf_core.noise.SeededNoise.
NoiseFn = Callable[[int, int, tuple, torch.dtype, torch.device], torch.Tensor]


@dataclass(frozen=True)
class RolloutConfig:
    num_frames: int = 21                  # latent frames of the training clip
    chunk_frames: int = 3                 # 3 chunk-wise, 1 frame-wise
    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    warp: bool = True                     # warp the listed steps onto the shifted grid (937.5, 833.33, 625)
    shift: float = 5.0
    last_step_only: bool = False          # always exit at the last step
    same_step_across_blocks: bool = True  # one exit step shared by all chunks (official default)
    context_noise: float = 0.0            # timestep label of the cache-update pass
    training_cache_noise: bool = True     # re-noise x0 at context_noise before the cache pass (official
                                          # training: σ snaps to 0.00498); False = exact inference behaviour
    rollout_window: int = -1              # rolling-cache training trick (paper §3.4): attention window in
                                          # latent frames during rollout; -1 = global (official code)
    rollout_sink: int = 0                 # frames pinned at the start of the rolling window
    gradient_checkpointing: bool = False  # recompute each chunk's exit-step forward during backward
    grad_frames: int = -1                 # only the last grad_frames frames' exit steps build a graph (the
                                          # earlier chunks are rolled out under no_grad); -1 = all frames

    def __post_init__(self):
        if self.num_frames % self.chunk_frames:
            raise ValueError(f"num_frames ({self.num_frames}) must be a multiple of chunk_frames ({self.chunk_frames})")
        if self.grad_frames != -1 and not (0 < self.grad_frames <= self.num_frames
                                           and self.grad_frames % self.chunk_frames == 0):
            raise ValueError(f"grad_frames ({self.grad_frames}) must be -1 or a multiple of chunk_frames "
                             f"({self.chunk_frames}) in (0, num_frames = {self.num_frames}]")
        if self.rollout_window != -1 and self.rollout_window < self.rollout_sink + self.chunk_frames:
            raise ValueError(f"rollout_window ({self.rollout_window}) must hold the sink ({self.rollout_sink}) "
                             f"plus one chunk ({self.chunk_frames} frames)")

    @property
    def num_chunks(self) -> int:
        return self.num_frames // self.chunk_frames

    @property
    def first_grad_chunk(self) -> int:
        return 0 if self.grad_frames == -1 else (self.num_frames - self.grad_frames) // self.chunk_frames


def rolling_trick_window(num_frames: int, chunk_frames: int, sink: int = 0) -> int:
    """Largest rollout window with which the last chunk cannot attend to the (non-sink) first chunk."""
    return num_frames - chunk_frames + sink


def step_timesteps(cfg: RolloutConfig) -> list[float]:
    """The denoising timesteps of the rollout (warped onto the shifted grid when `cfg.warp`)."""
    sched = FlowMatchScheduler(cfg.shift)
    return sched.warp(cfg.denoising_steps) if cfg.warp else [float(s) for s in cfg.denoising_steps]


def draw_exit_steps(cfg: RolloutConfig, shared_rng: torch.Generator, device=None) -> list[int]:
    """One exit step per chunk, uniform over the denoising steps, identical on every rank."""
    n = len(cfg.denoising_steps)
    steps = torch.randint(0, n, (cfg.num_chunks,), generator=shared_rng, device=shared_rng.device)
    if cfg.last_step_only:
        steps.fill_(n - 1)
    if cfg.same_step_across_blocks:
        steps.fill_(int(steps[0]))
    if dist.is_available() and dist.is_initialized():
        backend_device = device if device is not None and dist.get_backend() == "nccl" else "cpu"
        steps = steps.to(backend_device)
        dist.broadcast(steps, src=0)
    return [int(s) for s in steps.cpu()]


def rng_noise(rng: torch.Generator) -> NoiseFn:
    """Noise drawn in call order from one (per-rank) generator."""
    def noise(chunk, step, shape, dtype, device):
        return torch.randn(shape, generator=rng, device=rng.device).to(device=device, dtype=dtype)
    return noise


@dataclass
class RolloutResult:
    video: torch.Tensor                   # [B, F, C, h, w] x0 predictions; gradient only via exit steps
    exit_steps: list[int]                 # exit step index per chunk
    exit_timesteps: torch.Tensor          # [B, F] the timestep each frame was predicted from
    chunk_outputs: list[torch.Tensor] = field(default_factory=list)  # per chunk [B, f, C, h, w] (same tensors)


def self_rollout(generator, context: torch.Tensor, latent_shape: tuple[int, int, int], cfg: RolloutConfig,
                 shared_rng: torch.Generator, noise: NoiseFn, with_grad: bool = True,
                 exit_steps: list[int] | None = None, dtype: torch.dtype | None = None) -> RolloutResult:
    """Generate a [B, num_frames, C, h, w] clip with `generator` (a CausalWanModel, possibly FSDP-sharded).

    latent_shape = (C, h, w). `noise` supplies all Gaussian noise (use `rng_noise(local_rng)` in training);
    `exit_steps` overrides the draw from `shared_rng`. With `with_grad=False` everything runs under no_grad
    (the critic update's rollout); with `cfg.grad_frames` only the last chunks' exit steps build a graph.
    `dtype` (noise and KV cache) defaults to the generator's compute dtype: bf16 under FSDP2 mixed precision
    (official), else its parameter dtype.
    """
    channels, h, w = latent_shape
    batch = context.shape[0]
    device, dtype = context.device, dtype or _dtype_of(generator)
    sched = FlowMatchScheduler(cfg.shift)
    timesteps = step_timesteps(cfg)
    exits = exit_steps if exit_steps is not None else draw_exit_steps(cfg, shared_rng, device)
    if len(exits) != cfg.num_chunks or not all(0 <= s < len(timesteps) for s in exits):
        raise ValueError(f"exit_steps must give one index in [0, {len(timesteps)}) per chunk "
                         f"({cfg.num_chunks} chunks), got {exits}")
    cache = RolloutCache.allocate(generator.config, batch, generator.frame_tokens(h, w), cfg.num_frames,
                                  cfg.rollout_window, cfg.rollout_sink, dtype, device)
    n = cfg.chunk_frames
    shape = (batch, n, channels, h, w)
    outputs, exit_t = [], []

    def full_t(value: float) -> torch.Tensor:
        return torch.full((batch, n), value, dtype=torch.float32, device=device)

    for k, exit_step in enumerate(exits):
        start = k * n
        x = noise(k, 0, shape, dtype, device)
        with torch.no_grad():
            for j in range(exit_step):
                t = full_t(timesteps[j])
                x0 = sched.to_x0(x, generator(x, t, context, cache, start), t)
                x = sched.add_noise(x0, noise(k, j + 1, shape, dtype, device), full_t(timesteps[j + 1]))
        t = full_t(timesteps[exit_step])
        grad = with_grad and k >= cfg.first_grad_chunk
        with torch.set_grad_enabled(grad):
            x0 = _exit_forward(generator, x, t, context, cache, start, sched, cfg.gradient_checkpointing and grad)
        with torch.no_grad():
            clean = x0.detach()
            ctx_t = full_t(cfg.context_noise)
            if cfg.training_cache_noise:
                clean = sched.add_noise(clean, noise(k, len(timesteps), shape, dtype, device), ctx_t)
            generator(clean, ctx_t, context, cache, start)
        outputs.append(x0)
        exit_t.append(t)
    return RolloutResult(torch.cat(outputs, 1), list(exits), torch.cat(exit_t, 1), outputs)


def _exit_forward(generator, x, t, context, cache: RolloutCache, start: int, sched: FlowMatchScheduler,
                  use_checkpoint: bool) -> torch.Tensor:
    """The exit-step x0 prediction; reads the cache without writing (the cache pass rewrites this chunk).
    `use_checkpoint` recomputes the whole forward in backward, unless the generator checkpoints its blocks."""
    view = cache.read_only()

    def run(x_in, ctx):
        return sched.to_x0(x_in, generator(x_in, t, ctx, view, start), t)

    if use_checkpoint and torch.is_grad_enabled() and not getattr(generator, "checkpoint_blocks", False):
        return checkpoint(run, x, context, use_reentrant=False)
    return run(x, context)


def _dtype_of(module) -> torch.dtype:
    """The compute dtype: FSDP2's mixed-precision param dtype if sharded so, else the parameters'."""
    dtype = getattr(module, "compute_dtype", None) or getattr(module, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(module.parameters()).dtype
