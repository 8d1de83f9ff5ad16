"""DMD generator loss (selfforcing.md §7.3).

Under no_grad: t sampled shifted and clamped, x_t = add_noise(x̂, ε, t), x0_fake from the trainable critic
(no guidance), x0_real from the frozen teacher with CFG (cond + g·(cond − uncond), negative prompt),
grad = (x0_fake − x0_real) / mean|x̂ − x0_real| (per sample), nan_to_num. Then
loss = 0.5·MSE(x̂, stopgrad(x̂ − grad)) in float64, so dL/dx̂ = grad / numel.
"""
from __future__ import annotations

import torch

from ...scheduler import FlowMatchScheduler
from .score import guided_x0, predict_x0, randn_like, sample_score_timestep


def dmd_direction(video: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor) -> torch.Tensor:
    """The normalised DMD gradient (x0_fake − x0_real) / mean|x̂ − x0_real|, in float64. All [B, F, C, h, w]."""
    dims = tuple(range(1, video.dim()))
    normaliser = (video.double() - x0_real.double()).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((x0_fake.double() - x0_real.double()) / normaliser)


def dmd_loss(video: torch.Tensor, context: torch.Tensor, negative_context: torch.Tensor, teacher, critic,
             rng: torch.Generator, sched: FlowMatchScheduler, guidance_scale: float = 3.0,
             min_step: float = 20.0, max_step: float = 980.0) -> tuple[torch.Tensor, dict[str, float]]:
    """video [B, F, C, h, w] carries the generator's gradient; returns (loss, metrics)."""
    with torch.no_grad():
        x = video.detach()
        t = sample_score_timestep(x.shape[0], rng, sched.shift, min_step, max_step, device=x.device)
        x_t = sched.add_noise(x, randn_like(x, rng), t)
        x0_fake = predict_x0(critic, x_t, t, context, sched)
        x0_real = guided_x0(teacher, x_t, t, context, negative_context, guidance_scale, sched)
        grad = dmd_direction(x, x0_fake, x0_real)
    target = (video.double() - grad).detach()
    loss = 0.5 * torch.nn.functional.mse_loss(video.double(), target)
    return loss, {"dmd_loss": float(loss.detach()), "dmd_grad_norm": float(grad.norm()),
                  "dmd_t": float(t.float().mean())}
