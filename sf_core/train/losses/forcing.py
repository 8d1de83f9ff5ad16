"""Many-step baselines trained with flow matching on per-chunk noise levels (parallel masked forwards).

* diffusion forcing: every chunk is noised to its own timestep; block-causal mask over the noisy clip;
* teacher forcing: chunks are noised the same way but attend to the clean (ground-truth) previous chunks.
Timesteps are uniform over the shifted 1000-step training grid; loss = mean((v̂ − (ε − x0))²).
"""
from __future__ import annotations

import torch

from ...scheduler import FlowMatchScheduler
from .score import randn_like


def sample_chunk_timesteps(batch: int, frames: int, chunk_frames: int, rng: torch.Generator,
                           sched: FlowMatchScheduler, device=None) -> torch.Tensor:
    """[B, F] timesteps, one grid timestep per chunk."""
    idx = torch.randint(0, len(sched.timesteps), (batch, frames // chunk_frames), generator=rng, device=rng.device)
    return sched.timesteps[idx.cpu()].repeat_interleave(chunk_frames, dim=1).to(device)


def forcing_loss(generator, latents: torch.Tensor, context: torch.Tensor, rng: torch.Generator,
                 sched: FlowMatchScheduler, chunk_frames: int = 3, teacher_forcing: bool = False,
                 window: int = -1) -> tuple[torch.Tensor, dict[str, float]]:
    """latents [B, F, C, h, w] clean data; returns (flow-matching loss, metrics)."""
    b, f = latents.shape[:2]
    if f % chunk_frames:
        raise ValueError(f"latents have {f} frames, not a multiple of chunk_frames={chunk_frames}")
    t = sample_chunk_timesteps(b, f, chunk_frames, rng, sched, latents.device)
    eps = randn_like(latents, rng)
    x_t = sched.add_noise(latents, eps, t)
    clean = latents if teacher_forcing else None
    v = generator.forward_parallel(x_t, t, context, chunk_frames, window, clean_x=clean)
    loss = torch.mean((v.float() - (eps - latents).float()) ** 2)
    name = "teacher_forcing_loss" if teacher_forcing else "diffusion_forcing_loss"
    return loss, {name: float(loss.detach())}
