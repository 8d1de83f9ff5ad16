"""Training objectives behind one interface, so the training loop is loss-agnostic.

`build_objective(name, cfg, generator, teacher, critic, discriminator)` returns an `Objective` with
`generator_loss(batch, info)` and `critic_loss(batch, info)` (None for objectives without a critic).
Names: "dmd", "sid", "gan" (self-rollout + distribution matching, with a critic), "ode" (ODE-regression
initialisation), "teacher_forcing", "diffusion_forcing" (many-step baselines).

Randomness: `StepInfo.shared_rng` (identical on every rank) draws the rollout exit steps;
`StepInfo.local_rng` (per rank) draws all noise and score timesteps.
Modules may be FSDP2-sharded; they are called directly, never re-wrapped.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Protocol

import torch
import torch.nn as nn

from ..scheduler import FlowMatchScheduler
from .losses.dmd import dmd_loss
from .losses.forcing import forcing_loss
from .losses.gan import FeatureDiscriminator, gan_discriminator_loss, gan_generator_loss
from .losses.ode import ode_regression_loss
from .losses.score import critic_flow_loss
from .losses.sid import sid_loss
from .rollout import RolloutConfig, RolloutResult, rng_noise, rolling_trick_window, self_rollout, step_timesteps

OBJECTIVES = ("dmd", "sid", "gan", "ode", "teacher_forcing", "diffusion_forcing")


@dataclass
class TrainBatch:
    context: torch.Tensor                          # [B, L, text_dim] prompt embeddings
    negative_context: torch.Tensor | None          # [B, L, text_dim] teacher CFG prompt; None -> zeros
    latents: torch.Tensor | None = None            # [B, F, C, h, w] real data (GAN real, TF/DF targets); normalised
    ode_trajectory: torch.Tensor | None = None     # [B, K, F, C, h, w] ODE pairs (K−1 = clean)


@dataclass
class StepInfo:
    step: int
    shared_rng: torch.Generator                    # seeded identically on every rank (exit steps)
    local_rng: torch.Generator                     # per rank (noise, score timesteps)


@dataclass(frozen=True)
class ObjectiveConfig:
    """Official defaults (selfforcing.md §7.6) unless noted."""

    latent_shape: tuple[int, int, int, int] = (21, 16, 60, 104)   # (frames, channels, h, w)
    chunk_frames: int = 3
    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    warp: bool = True
    shift: float = 5.0                       # generator grid and score-timestep shift
    last_step_only: bool = False
    same_step_across_blocks: bool = True
    context_noise: float = 0.0
    training_cache_noise: bool = True        # official σ≈0.005 re-noise before the training cache pass
    rolling_trick: bool = False              # paper §3.4: the last chunk cannot attend to the first one
    rollout_window: int = -1                 # explicit rollout window (frames); -1 with rolling_trick:
                                             # the largest window that hides the first chunk from the last
    rollout_sink: int = 0
    rollout_frames: int = -1                 # latent frames the generator rolls out (-1: latent_shape's); when
                                             # longer, DMD / SiD / GAN score its last latent_shape frames and the
                                             # gradient skips that window's first chunk (it stands in for a clip
                                             # start, as the official gradient mask does, selfforcing.md §7.2)
    gradient_checkpointing: bool = False     # checkpoint each chunk's exit-step forward
    guidance_scale: float = 3.0              # x0_real = cond + 3·(cond − uncond)
    min_step: float = 20.0
    max_step: float = 980.0
    critic_updates_per_generator: int = 5    # official dfake_gen_update_ratio
    sid_alpha: float = 1.0
    gan_g_weight: float = 1e-2
    gan_d_weight: float = 1e-2
    gan_relativistic: bool = False
    gan_critic_flow_loss: bool = True        # keep training the critic backbone with its flow loss
    r1_weight: float = 0.0
    r1_sigma: float = 0.01
    parallel_window: int = -1                # attention window (frames) of the ODE/TF/DF parallel forwards
    rollout_dtype: str | None = None         # noise/KV-cache dtype of rollouts ("bfloat16"); None = the
                                             # generator's parameter dtype

    @classmethod
    def from_dict(cls, cfg: dict | None) -> "ObjectiveConfig":
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown objective config keys {unknown}; known keys: {sorted(known)}")
        for key in ("latent_shape", "denoising_steps"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        if len(cfg.get("latent_shape", cls.latent_shape)) != 4:
            raise ValueError("latent_shape must be (frames, channels, h, w)")
        dtype = cfg.get("rollout_dtype")
        if dtype is not None and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise ValueError(f"rollout_dtype must be a torch dtype name such as 'bfloat16', got {dtype!r}")
        return cls(**cfg)

    def to_dict(self) -> dict:
        return asdict(self)

    def window(self) -> int:
        if self.rollout_window != -1 or not self.rolling_trick:
            return self.rollout_window
        return rolling_trick_window(self.latent_shape[0], self.chunk_frames, self.rollout_sink)

    def rollout(self) -> RolloutConfig:
        frames = self.latent_shape[0]
        rolled = frames if self.rollout_frames == -1 else self.rollout_frames
        if rolled < frames:
            raise ValueError(f"rollout_frames ({rolled}) must be -1 or at least latent_shape's {frames} frames "
                             f"(the clip the scores judge)")
        return RolloutConfig(
            num_frames=rolled, grad_frames=-1 if rolled == frames else frames - self.chunk_frames,
            chunk_frames=self.chunk_frames, denoising_steps=self.denoising_steps,
            warp=self.warp, shift=self.shift, last_step_only=self.last_step_only,
            same_step_across_blocks=self.same_step_across_blocks, context_noise=self.context_noise,
            training_cache_noise=self.training_cache_noise, rollout_window=self.window(),
            rollout_sink=self.rollout_sink, gradient_checkpointing=self.gradient_checkpointing)


class Objective(Protocol):
    name: str
    critic_updates_per_generator: int

    def trainable_modules(self) -> dict[str, nn.Module]: ...
    def generator_loss(self, batch: TrainBatch, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]: ...
    def critic_loss(self, batch: TrainBatch, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]] | None: ...


def _negative(batch: TrainBatch) -> torch.Tensor:
    return batch.negative_context if batch.negative_context is not None else torch.zeros_like(batch.context)


class SelfForcingObjective:
    """Self-rollout + a distribution-matching generator loss + a critic (fake score) update."""

    def __init__(self, name: str, cfg: ObjectiveConfig, generator, teacher, critic, discriminator=None):
        needs_teacher = name in ("dmd", "sid")
        if critic is None or (needs_teacher and teacher is None):
            raise ValueError(f"objective {name!r} needs a critic" + (" and a teacher" if needs_teacher else ""))
        self.name, self.cfg = name, cfg
        self.generator, self.teacher, self.critic, self.discriminator = generator, teacher, critic, discriminator
        self.critic_updates_per_generator = cfg.critic_updates_per_generator
        self.rollout_config = cfg.rollout()
        self.scheduler = FlowMatchScheduler(cfg.shift)

    def trainable_modules(self) -> dict[str, nn.Module]:
        mods = {"generator": self.generator, "critic": self.critic}
        if self.discriminator is not None:
            mods["discriminator"] = self.discriminator
        return mods

    def rollout(self, batch: TrainBatch, info: StepInfo, with_grad: bool) -> RolloutResult:
        _, c, h, w = self.cfg.latent_shape
        dtype = getattr(torch, self.cfg.rollout_dtype) if self.cfg.rollout_dtype else None
        return self_rollout(self.generator, batch.context, (c, h, w), self.rollout_config, info.shared_rng,
                            rng_noise(info.local_rng), with_grad=with_grad, dtype=dtype)

    def scored_rollout(self, batch: TrainBatch, info: StepInfo, with_grad: bool) -> tuple[torch.Tensor, RolloutResult]:
        """(the clip the losses judge: the rollout's last latent_shape frames [B, F, C, h, w], the rollout)."""
        out = self.rollout(batch, info, with_grad)
        return out.video[:, out.video.shape[1] - self.cfg.latent_shape[0]:], out

    def generator_loss(self, batch: TrainBatch, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, rng, sched = self.cfg, info.local_rng, self.scheduler
        video, out = self.scored_rollout(batch, info, with_grad=True)
        if self.name == "dmd":
            loss, m = dmd_loss(video, batch.context, _negative(batch), self.teacher, self.critic, rng, sched,
                               cfg.guidance_scale, cfg.min_step, cfg.max_step)
        elif self.name == "sid":
            loss, m = sid_loss(video, batch.context, _negative(batch), self.teacher, self.critic, rng, sched,
                               cfg.sid_alpha, cfg.guidance_scale, cfg.min_step, cfg.max_step)
        else:
            loss, m = gan_generator_loss(video, batch.latents, batch.context, self.critic, self.discriminator,
                                         rng, sched, cfg.gan_g_weight, cfg.gan_relativistic, cfg.min_step,
                                         cfg.max_step)
        m["exit_step"] = float(out.exit_steps[0])
        return loss, m

    def critic_loss(self, batch: TrainBatch, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, rng, sched = self.cfg, info.local_rng, self.scheduler
        fake, _ = self.scored_rollout(batch, info, with_grad=False)
        if self.name != "gan":
            return critic_flow_loss(self.critic, fake, batch.context, rng, sched, cfg.min_step, cfg.max_step)
        if batch.latents is None:
            raise ValueError("the GAN objective needs real latents in TrainBatch.latents")
        loss, m = gan_discriminator_loss(fake, batch.latents, batch.context, self.critic, self.discriminator, rng,
                                         sched, cfg.gan_d_weight, cfg.gan_relativistic, cfg.r1_weight,
                                         cfg.r1_sigma, cfg.min_step, cfg.max_step)
        if cfg.gan_critic_flow_loss:
            flow, fm = critic_flow_loss(self.critic, fake, batch.context, rng, sched, cfg.min_step, cfg.max_step)
            loss, m = loss + flow, {**m, **fm}
        return loss, m


class ParallelObjective:
    """Generator-only objectives on parallel masked forwards: ODE regression, teacher/diffusion forcing."""

    critic_updates_per_generator = 1

    def __init__(self, name: str, cfg: ObjectiveConfig, generator):
        self.name, self.cfg, self.generator = name, cfg, generator
        self.scheduler = FlowMatchScheduler(cfg.shift)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def trajectory_timesteps(self) -> list[float]:
        """Timesteps of the stored ODE trajectory points: the rollout steps plus 0 (clean)."""
        return step_timesteps(self.cfg.rollout()) + [0.0]

    def generator_loss(self, batch: TrainBatch, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        if self.name == "ode":
            if batch.ode_trajectory is None:
                raise ValueError("the 'ode' objective needs TrainBatch.ode_trajectory [B, K, F, C, h, w]")
            return ode_regression_loss(self.generator, batch.ode_trajectory, self.trajectory_timesteps(),
                                       batch.context, info.local_rng, self.scheduler, cfg.chunk_frames,
                                       cfg.parallel_window)
        if batch.latents is None:
            raise ValueError(f"the {self.name!r} objective needs clean data in TrainBatch.latents [B, F, C, h, w]")
        return forcing_loss(self.generator, batch.latents, batch.context, info.local_rng, self.scheduler,
                            cfg.chunk_frames, self.name == "teacher_forcing", cfg.parallel_window)

    def critic_loss(self, batch: TrainBatch, info: StepInfo) -> None:
        return None


def build_objective(name: str, cfg: dict | ObjectiveConfig | None, generator, teacher=None, critic=None,
                    discriminator=None) -> Objective:
    """The objective `name` (one of OBJECTIVES). For "gan" without a discriminator, a FeatureDiscriminator
    head on the critic is created (same device/dtype as the critic) and returned by trainable_modules()."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")
    cfg = cfg if isinstance(cfg, ObjectiveConfig) else ObjectiveConfig.from_dict(cfg)
    if name in ("dmd", "sid", "gan"):
        if name == "gan" and discriminator is None:
            if critic is None:
                raise ValueError("objective 'gan' needs a critic (the discriminator backbone)")
            ref = next(critic.parameters())
            discriminator = FeatureDiscriminator.for_backbone(critic).to(device=ref.device)
        return SelfForcingObjective(name, cfg, generator, teacher, critic, discriminator)
    return ParallelObjective(name, cfg, generator)
