"""Shared pieces of the score-based losses: timestep sampling, x0 predictions, the critic's flow loss.

selfforcing.md §7.3–7.4: one timestep per video, t ~ randint(0, 1000), shifted t ← 1000·s·u/(1 + (s−1)·u)
(u = t/1000, s = 5), clamped to [min_step, max_step] = [20, 980]; x_t = (1−σ)·x + σ·ε with σ snapped to
the generator's shift-5 grid; score networks get a [B] timestep and are bidirectional (no cache).
"""
from __future__ import annotations

import torch

from ...scheduler import FlowMatchScheduler


def randn_like(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Gaussian noise shaped like x, drawn from `rng` (on the generator's device), in x's dtype/device."""
    return torch.randn(x.shape, generator=rng, device=rng.device).to(device=x.device, dtype=x.dtype)


def sample_score_timestep(batch: int, rng: torch.Generator, shift: float = 5.0, min_step: float = 20.0,
                          max_step: float = 980.0, num_train_timesteps: int = 1000, device=None) -> torch.Tensor:
    """[B] float32 timesteps: uniform integer, shifted, clamped."""
    u = torch.randint(0, num_train_timesteps, (batch,), generator=rng, device=rng.device).double() / num_train_timesteps
    t = num_train_timesteps * shift * u / (1 + (shift - 1) * u)
    return t.clamp(min_step, max_step).float().to(device)


def predict_x0(model, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
               sched: FlowMatchScheduler) -> torch.Tensor:
    """x0 prediction of a bidirectional score network. x_t [B, F, C, h, w], t [B]."""
    return sched.to_x0(x_t, model(x_t, t, context), t)


def guided_x0(teacher, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
              negative_context: torch.Tensor, guidance_scale: float, sched: FlowMatchScheduler) -> torch.Tensor:
    """Teacher x0 with classifier-free guidance in the official form cond + g·(cond − uncond)."""
    cond = predict_x0(teacher, x_t, t, context, sched)
    if guidance_scale == 0:
        return cond
    uncond = predict_x0(teacher, x_t, t, negative_context, sched)
    return cond + guidance_scale * (cond - uncond)


def critic_flow_loss(critic, video: torch.Tensor, context: torch.Tensor, rng: torch.Generator,
                     sched: FlowMatchScheduler, min_step: float = 20.0, max_step: float = 980.0
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """Flow-matching loss of the fake score on (detached) generated samples: mean((v̂ − (ε − x))²)."""
    video = video.detach()
    t = sample_score_timestep(video.shape[0], rng, sched.shift, min_step, max_step, device=video.device)
    eps = randn_like(video, rng)
    x_t = sched.add_noise(video, eps, t)
    v = critic(x_t, t, context)
    loss = torch.mean((v.float() - (eps - video).float()) ** 2)
    return loss, {"critic_flow_loss": float(loss.detach()), "critic_t": float(t.float().mean())}
