"""Score identity distillation generator loss (selfforcing.md §7.8), runnable by name.

loss = mean[(x0_real − x0_fake) ⊙ ((x0_real − x̂) − α·(x0_real − x0_fake)) / mean|x̂ − x0_real|]
in float64,
with gradients flowing through both score forwards into x̂ (the normaliser is under no_grad). The official
code reads an undefined `min_score_timestep`; here the score timestep range is explicit (min_step, max_step).
The backward also reaches the critic's parameters (as in the official code): the critic update must
start from zeroed gradients (`zero_grad` before its backward), which discards them.
"""
from __future__ import annotations

import torch

from ...scheduler import FlowMatchScheduler
from .score import guided_x0, predict_x0, randn_like, sample_score_timestep


def sid_loss(video: torch.Tensor, context: torch.Tensor, negative_context: torch.Tensor, teacher, critic,
             rng: torch.Generator, sched: FlowMatchScheduler, alpha: float = 1.0, guidance_scale: float = 3.0,
             min_step: float = 20.0, max_step: float = 980.0) -> tuple[torch.Tensor, dict[str, float]]:
    """video [B, F, C, h, w] carries the generator's gradient; returns (loss, metrics)."""
    t = sample_score_timestep(video.shape[0], rng, sched.shift, min_step, max_step, device=video.device)
    x_t = sched.add_noise(video, randn_like(video, rng), t)
    x0_fake = predict_x0(critic, x_t, t, context, sched).double()
    x0_real = guided_x0(teacher, x_t, t, context, negative_context, guidance_scale, sched).double()
    x = video.double()
    with torch.no_grad():
        normaliser = (x - x0_real).abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)
    per_element = (x0_real - x0_fake) * ((x0_real - x) - alpha * (x0_real - x0_fake)) / normaliser
    loss = torch.nan_to_num(per_element).mean()
    return loss, {"sid_loss": float(loss.detach()), "sid_t": float(t.float().mean())}
