"""DMD on teacher-forcing / diffusion-forcing inputs: the paper's "TF + DMD" and "DF + DMD" rows.

Identical to the self-forcing DMD objective except where a chunk's context comes from: each chunk is
denoised by the generator's own few-step schedule (no gradient before the exit step, gradient at it), but it
attends to *ground-truth* previous chunks — clean (teacher forcing) or noised to a per-chunk grid timestep
(diffusion forcing) — instead of to its own earlier outputs. All chunks run in one parallel masked forward
(`CausalWanModel.forward_parallel` with `clean_x`), so the generator never sees its own errors in context.
Implements the `sf_core.train.objectives.Objective` protocol.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..scheduler import FlowMatchScheduler
from ..train.losses.dmd import dmd_loss
from ..train.losses.forcing import sample_chunk_timesteps
from ..train.losses.score import critic_flow_loss, randn_like
from ..train.objectives import ObjectiveConfig, StepInfo, TrainBatch
from ..train.rollout import draw_exit_steps, step_timesteps


class ForcingDMDObjective:
    """`mode` "teacher_forcing" (clean context) or "diffusion_forcing" (noisy context)."""

    def __init__(self, mode: str, cfg: ObjectiveConfig, generator, teacher, critic):
        if mode not in ("teacher_forcing", "diffusion_forcing"):
            raise ValueError(f"ForcingDMDObjective: mode must be 'teacher_forcing' or 'diffusion_forcing', got {mode!r}")
        self.name, self.mode, self.cfg = f"{mode}_dmd", mode, cfg
        self.generator, self.teacher, self.critic = generator, teacher, critic
        self.critic_updates_per_generator = cfg.critic_updates_per_generator
        self.rollout_config = cfg.rollout()
        self.timesteps = step_timesteps(self.rollout_config)
        self.scheduler = FlowMatchScheduler(cfg.shift)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "critic": self.critic}

    def generate(self, batch: TrainBatch, info: StepInfo, with_grad: bool) -> torch.Tensor:
        """x0 of every chunk [B, F, C, h, w], each conditioned on ground-truth earlier chunks."""
        real, sched, n = batch.latents, self.scheduler, self.cfg.chunk_frames
        if real is None:
            raise ValueError(f"the {self.name!r} objective needs ground-truth latents in TrainBatch.latents")
        b, f = real.shape[:2]
        exit_step = draw_exit_steps(self.rollout_config, info.shared_rng, real.device)[0]
        if self.mode == "teacher_forcing":
            clean, clean_t = real, torch.zeros(b, f, device=real.device)
        else:
            clean_t = sample_chunk_timesteps(b, f, n, info.local_rng, sched, real.device)
            clean = sched.add_noise(real, randn_like(real, info.local_rng), clean_t)

        def predict(x, j):
            t = torch.full((b, f), self.timesteps[j], device=real.device)
            v = self.generator.forward_parallel(x, t, batch.context, n, self.cfg.parallel_window,
                                                clean_x=clean, clean_t=clean_t)
            return sched.to_x0(x, v, t)

        x = randn_like(real, info.local_rng)
        with torch.no_grad():
            for j in range(exit_step):
                t_next = torch.full((b, f), self.timesteps[j + 1], device=real.device)
                x = sched.add_noise(predict(x, j), randn_like(real, info.local_rng), t_next)
        with torch.set_grad_enabled(with_grad):
            return predict(x, exit_step)

    def generator_loss(self, batch: TrainBatch, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        video = self.generate(batch, info, with_grad=True)
        negative = batch.negative_context if batch.negative_context is not None else torch.zeros_like(batch.context)
        return dmd_loss(video, batch.context, negative, self.teacher, self.critic, info.local_rng, self.scheduler,
                        cfg.guidance_scale, cfg.min_step, cfg.max_step)

    def critic_loss(self, batch: TrainBatch, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        fake = self.generate(batch, info, with_grad=False)
        return critic_flow_loss(self.critic, fake, batch.context, info.local_rng, self.scheduler,
                                self.cfg.min_step, self.cfg.max_step)
