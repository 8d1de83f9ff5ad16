"""The paper's Table 2 in miniature, end to end on the toy world: `python -m sf_core.toy.reproduce`.

Stages (all seeded; checkpoints in `<out>/checkpoints/*.safetensors`, loadable with `load_model`):

0. the latent space: exact pixels (profiles quick / full), or a learned causal autoencoder trained on the
   renderer's frames (profile default: 64×64 px, stride 8 × 4, :mod:`sf_core.toy.autoencoder`, on 32-pixel
   crops), optionally followed by refining its decoder alone (`decoder_steps`; the latent space does not move);
1. teacher: a bidirectional many-step CausalWanModel (no cache) trained with flow matching on toy clips,
   the condition dropped to zeros 10% of the time so it supports classifier-free guidance; with
   `object_weight` the loss on the latent positions objects touch counts 1 + object_weight times;
2. ODE pairs from the teacher (48 Euler steps, shift 5, CFG, states kept at [0, 12, 24, 36, -1]) and an
   ODE-regression initialisation of a causal student per chunk size (3 = chunk-wise, 1 = frame-wise);
3. students, each started from its ODE initialisation: teacher forcing, diffusion forcing (many-step,
   flow matching), TF + DMD, DF + DMD (:mod:`sf_core.toy.forcing_dmd`) and self forcing + DMD, the last
   also with the rolling-cache training trick;
4. evaluation with the exact metrics (:mod:`sf_core.toy.metrics`) on held-out prompts at the training length
   (global cache) and at 3× and 10× it (rolling cache of `frames - chunk` frames);
5. `docs/reproduction.md`: the generated part between the result markers is replaced, the rest is kept.

`--rescore` evaluates a finished run's checkpoints again (e.g. after refining its decoder), and
`sf_core.toy.seeds` summarises runs of several `--seed`s.

A compact single-process driver: AdamW with betas (0, 0.999) for students and critics, gradient clipping,
`critic_updates_per_generator` critic steps before each generator step (sf_core.train.objectives).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from sf_core.weights.checkpoint import load_model, save_safetensors
from ..config import ModelConfig, StreamConfig
from ..model import CausalWanModel
from ..noise import SeededNoise
from ..pipeline import StreamingPipeline
from ..train.losses.forcing import sample_chunk_timesteps
from ..train.objectives import ObjectiveConfig, StepInfo, TrainBatch, build_objective
from ..train.ode_pairs import generate_ode_trajectory, kept_timesteps, save_ode_pairs
from ..scheduler import FlowMatchScheduler
from .dataset import sample_batch
from .autoencoder import AutoencoderConfig, finetune_decoder, load_autoencoder, save_autoencoder, train_autoencoder
from .forcing_dmd import ForcingDMDObjective
from .latents import PIXELS, AutoencoderSpace
from .metrics import evaluate, summarize
from .render import render
from .seeds import replace_block
from .text import ToyTextEncoder
from .world import sample_scenes

TRAIN_SEED, EVAL_SEED = 0, 1_000_000       # scene streams: training clips / held-out evaluation prompts
ODE_KEEP = (0, 12, 24, 36, -1)
DECODER_NOISE, DECODER_LR, DECODER_BATCH = 0.02, 1e-3, 8   # the decoder stage (profile decoder_steps)
RESULTS_START, RESULTS_END = "<!-- reproduction:results:start -->", "<!-- reproduction:results:end -->"
TABLE_METRICS = (("frame_error", "frame err ↓"), ("colour_error", "colour err ↓"),
                 ("motion_error", "motion err (px) ↓"), ("adherence", "adherence ↑"),
                 ("sharpness", "sharpness (1 = exact)"), ("flicker", "flicker ↓"),
                 ("frame_error_growth", "frame-err growth ↓"), ("colour_error_growth", "colour-err growth ↓"),
                 ("brightness_growth", "brightness drift (→ 0)"))


@dataclass(frozen=True)
class Profile:
    name: str
    height: int = 16                  # pixels (latent = height / spatial stride of the latent space)
    width: int = 16
    frames: int = 9                   # training length in latent frames (a multiple of 3)
    latent: str = "pixels"            # pixels (exact, stride 2 × 1) | autoencoder (learned, stride 8 × 4)
    autoencoder_steps: int = 0        # training steps of the autoencoder (latent "autoencoder")
    autoencoder_batch: int = 8        # clips of 9 frames per autoencoder step
    autoencoder_crop: int | None = None   # train on crop × crop windows of the frames (None: whole frames)
    autoencoder_noise: float = 0.05   # std of the training noise on the raw latents
    autoencoder_width: int = 64
    autoencoder_outline_weight: float = 0.0   # loss weight 1 + this near object outlines (AutoencoderConfig)
    autoencoder_shape_code: float = 0.0       # weight tying latent channels 0..2 to shape coverage (AutoencoderConfig)
    autoencoder_motion_code: float = 0.0      # weight tying latent channels 3..5 to motion (AutoencoderConfig)
    autoencoder_object_code: float = 0.0      # weight tying latent channels 6..8 to objects 1..3 (AutoencoderConfig)
    latent_channels: int = 16
    decoder_width: int = 96           # the autoencoder's decoder (trained with its encoder)
    decoder_depth: int = 2
    decoder_steps: int = 0            # > 0: then refine the decoder alone on the frozen encoder (same latent space)
    data_pool: int = 0                # > 0: encode this many training clips once and draw batches from them
    object_weight: float = 0.0        # teacher loss weight 1 + this on the latent positions objects touch
    dim: int = 64
    ffn_dim: int = 128
    num_heads: int = 1
    num_layers: int = 2
    batch: int = 16
    teacher_steps: int = 2000
    teacher_lr: float = 1e-3
    compile_teacher: bool = False     # torch.compile the teacher's training forward (1.09–1.12× on the stage, 2 CPU
                                      # threads, docs/performance.md); the saved weights are the same module's
    ode_pairs: int = 32
    ode_steps: int = 100
    forcing_steps: int = 60           # teacher / diffusion forcing fine-tuning
    dmd_steps: int = 30               # generator steps of every DMD student
    rollout_frames: int = 0           # self forcing rolls out this many latent frames and DMD judges the last
                                      # `frames` of them (ObjectiveConfig.rollout_frames); 0 = `frames`
    critic_ratio: int = 2             # critic updates per generator update
    student_lr: float = 3e-4
    critic_lr: float = 3e-4
    ode_guidance: float = 1.0         # teacher CFG for ODE pairs, uncond + g·(cond − uncond); 1 = none
    dmd_guidance: float = 0.0         # real-score CFG of DMD, cond + g·(cond − uncond); 0 = none
    many_steps: int = 8               # sampling steps of the many-step TF/DF students (DMD students use 4)
    eval_samples: int = 8
    eval_lengths: tuple[int, ...] = (1, 3, 10)   # multiples of the training length
    grad_clip: float = 1.0
    seed: int = 0


PROFILES = {
    "quick": Profile("quick"),
    "full": Profile("full", dim=128, ffn_dim=256, teacher_steps=6000, teacher_lr=5e-4, ode_pairs=512,
                    ode_steps=1500, forcing_steps=1500, dmd_steps=600, critic_ratio=5, many_steps=16, student_lr=1e-4,
                    critic_lr=1e-4, eval_samples=64),
    # The embedded default: 64×64 px in the learned latent space (8×8 latents, the DiT cost of 16×16 pixel
    # latents), a wider, deeper teacher and longer training than `quick`; CPU-sized. With 4 heads and lr 2e-3
    # the teacher beats in 2000 steps what 1 head and lr 5e-4 reached in 8000; weighting the teacher's loss
    # 5× on the latent positions objects touch beats 4× the steps unweighted. The weighted teacher alone gains
    # nothing from CFG, but its CFG-3 ODE pairs make a better student than CFG-1 pairs (0.46 vs 0.43); DMD's
    # real score is cond + 2·(cond − uncond). The autoencoder's loss weighted 9× near outlines makes shape 3.7×
    # louder in the latents and lifts the teacher 0.44 -> 0.50; tying latent channels 0..2 to each cell's shape
    # coverage (shape code 5) makes a shape change 1.7× a 4-px shift in the latents (from 0.36×) and lifts the
    # student's shape accuracy from chance (0.35) to 0.58; tying channels 3..5 to each cell's motion (motion
    # code 5) lifts its motion accuracy 0.21 -> 0.50 (chance 0.14). The teacher, the longest stage, is compiled
    # (1.09–1.12×; the whole run took 43–65 min on 2 threads, docs/reproduction.md).
    "default": Profile("default", height=64, width=64, latent="autoencoder", autoencoder_steps=4000,
                       autoencoder_batch=16, autoencoder_crop=32, autoencoder_noise=0.02, decoder_steps=500,
                       autoencoder_outline_weight=8.0, autoencoder_shape_code=5.0, autoencoder_motion_code=5.0,
                       data_pool=6144, object_weight=4.0, dim=128, ffn_dim=256, num_heads=4, num_layers=4,
                       teacher_steps=8000, teacher_lr=2e-3, compile_teacher=True, ode_pairs=256, ode_steps=800,
                       ode_guidance=3.0, dmd_steps=300, dmd_guidance=2.0, eval_samples=16),
    "smoke": Profile("smoke", frames=6, dim=32, ffn_dim=64, num_layers=1, batch=2, teacher_steps=2, ode_pairs=2,
                     ode_steps=2, forcing_steps=2, dmd_steps=1, critic_ratio=1, many_steps=2, eval_samples=2,
                     eval_lengths=(1, 2)),
    "smoke_autoencoder": Profile("smoke_autoencoder", height=32, width=32, frames=6, latent="autoencoder",
                                 autoencoder_steps=2, autoencoder_crop=16, autoencoder_width=16, latent_channels=9,
                                 autoencoder_outline_weight=8.0, autoencoder_shape_code=5.0,
                                 autoencoder_motion_code=5.0, autoencoder_object_code=5.0, decoder_steps=2,
                                 decoder_width=16, data_pool=8, object_weight=4.0, dim=32, ffn_dim=64, num_layers=1,
                                 batch=2, teacher_steps=2, ode_pairs=2, ode_steps=2, forcing_steps=2, dmd_steps=1,
                                 critic_ratio=1, many_steps=2, eval_samples=2, eval_lengths=(1, 2)),
}


@dataclass(frozen=True)
class Student:
    method: str                       # ode_init | teacher_forcing | diffusion_forcing | tf_dmd | df_dmd | self_forcing
    chunk: int
    rolling_trick: bool = False

    @property
    def key(self) -> str:
        return f"{self.method}_c{self.chunk}" + ("_rolling" if self.rolling_trick else "")

    @property
    def label(self) -> str:
        names = {"ode_init": "ODE init (no further training)", "teacher_forcing": "Teacher forcing (many-step)", "diffusion_forcing": "Diffusion forcing (many-step)",
                 "tf_dmd": "TF + DMD", "df_dmd": "DF + DMD", "self_forcing": "Self forcing + DMD"}
        return names[self.method] + (" + rolling trick" if self.rolling_trick else "")

    @property
    def many_step(self) -> bool:
        return self.method in ("teacher_forcing", "diffusion_forcing")


def students() -> list[Student]:
    out = []
    for chunk in (3, 1):
        out += [Student(m, chunk) for m in ("ode_init", "teacher_forcing", "diffusion_forcing", "tf_dmd", "df_dmd", "self_forcing")]
        out.append(Student("self_forcing", chunk, rolling_trick=True))
    return out


class Run:
    """Shared state of one reproduction: profile, device, text encoder, output folder, log."""

    def __init__(self, profile: Profile, device: str, out: Path):
        self.p, self.device, self.out = profile, torch.device(device), out
        self.text = ToyTextEncoder(text_dim=64, max_len=24, seed=0)
        self.timings: dict[str, float] = {}
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        if profile.latent == "pixels":
            self.use_space(PIXELS)   # the autoencoder space is set once its stage has run

    def use_space(self, space, pool: bool = True) -> None:
        """Train and evaluate in `space` (sf_core.toy.latents); encodes the data pool when the profile has one
        (and `pool`: evaluation alone needs none)."""
        p = self.p
        self.space = space
        self.latent = (space.channels, p.height // space.spatial_stride, p.width // space.spatial_stride)
        self.model_config = ModelConfig(dim=p.dim, ffn_dim=p.ffn_dim, num_heads=p.num_heads,
                                        num_layers=p.num_layers, in_dim=space.channels, out_dim=space.channels,
                                        text_dim=self.text.text_dim, freq_dim=64, text_len=self.text.max_len)
        self.pool = None
        if p.data_pool and pool:
            parts = [sample_batch(64, p.frames, TRAIN_SEED + p.seed, i, p.height, p.width, space=space,
                                  with_objects=p.object_weight > 0) for i in range(0, p.data_pool, 64)]
            self.pool = ([q for part in parts for q in part[0]],
                         *(torch.cat([part[i] for part in parts]) for i in range(1, len(parts[0]))))
            self.log(f"data pool: {len(self.pool[0])} clips encoded, {self.pool[1].numel() * 4 / 2**20:.0f} MiB")

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def data(self, step: int) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Training batch `step`: prompts, context [B, L, 64], latents [B, F, C, h, w] and, when the profile
        weights objects, the latent positions they touch [B, F, h, w] (else None); from the pool if any."""
        p = self.p
        if self.pool is None:
            prompts, *tensors = sample_batch(p.batch, p.frames, TRAIN_SEED + p.seed, step * p.batch, p.height,
                                             p.width, space=self.space, with_objects=p.object_weight > 0)
        else:
            gen = torch.Generator().manual_seed(p.seed * 1_000_003 + step)
            idx = torch.randint(0, len(self.pool[0]), (p.batch,), generator=gen)
            prompts, tensors = [self.pool[0][i] for i in idx], [x[idx] for x in self.pool[1:]]
        latents, objects = tensors[0].to(self.device), (tensors[1].to(self.device) if len(tensors) > 1 else None)
        return prompts, self.text(prompts, self.device), latents, objects

    def pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, F, C, h, w] -> pixel frames [B, T, 3, H, W] in [0, 1] (the space's decoder)."""
        return self.space.decode(latents)

    def stream_config(self, chunk: int, many_step: bool, window: int = -1) -> StreamConfig:
        steps = self.p.many_steps if many_step else 4
        return StreamConfig(chunk_frames=chunk, denoising_steps=tuple(1000 - 1000 * i / steps for i in range(steps)),
                            shift=5.0, window=window, sink=0)

    def save(self, model, name: str, stream: StreamConfig | None) -> Path:
        return save_safetensors(model, self.out / "checkpoints" / f"{name}.safetensors", stream, model.config)


def adamw(module: torch.nn.Module, lr: float, betas=(0.0, 0.999)) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, betas=betas,
                             weight_decay=0.0)


def optimise(loss: torch.Tensor, opt: torch.optim.Optimizer, module: torch.nn.Module, clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    opt.step()


# -- stage 0: the latent space -----------------------------------------------------------------------------------
def autoencoder_config(p: Profile) -> AutoencoderConfig:
    """The autoencoder a profile trains (raises ValueError for an inconsistent one, e.g. a motion code without
    room for it)."""
    return AutoencoderConfig(p.latent_channels, p.autoencoder_width, p.autoencoder_noise, p.decoder_width,
                             p.decoder_depth, p.autoencoder_outline_weight, p.autoencoder_shape_code,
                             p.autoencoder_motion_code, p.autoencoder_object_code)


def autoencoder_stage(run: Run, source: Path | None):
    """Train the toy autoencoder (or load the file `source`) -> <out>/checkpoints/autoencoder.safetensors."""
    p, name = run.p, "autoencoder.safetensors"
    if source is not None:
        model = load_autoencoder(source, run.device)
        run.log(f"autoencoder loaded from {source}")
    else:
        model = train_autoencoder(p.autoencoder_steps, p.autoencoder_batch, p.height, p.width, TRAIN_SEED + p.seed,
                                  autoencoder_config(p), log=run.log, device=run.device, crop=p.autoencoder_crop)
        if p.decoder_steps:   # on the stored (float16) encoder, as `python -m sf_core.toy.autoencoder` does
            save_autoencoder(model, run.out / "checkpoints" / name)
            model = finetune_decoder(load_autoencoder(run.out / "checkpoints" / name, run.device), p.decoder_steps,
                                     DECODER_BATCH, p.height, p.width, p.seed, noise=DECODER_NOISE,
                                     lr=DECODER_LR, log=run.log, device=run.device)   # whole frames
    save_autoencoder(model, run.out / "checkpoints" / name)
    return load_autoencoder(run.out / "checkpoints" / name, run.device)  # the shipped (float16) weights


# -- stage 1: the teacher --------------------------------------------------------------------------------------
def train_teacher(run: Run) -> CausalWanModel:
    p = run.p
    torch.manual_seed(p.seed)
    teacher = CausalWanModel(run.model_config, attention="sdpa").to(run.device)
    forward = torch.compile(teacher) if p.compile_teacher else teacher
    opt = adamw(teacher, p.teacher_lr, betas=(0.9, 0.999))
    sched = FlowMatchScheduler(5.0)
    rng = torch.Generator(device=run.device).manual_seed(p.seed + 1)
    for step in range(p.teacher_steps):
        for group in opt.param_groups:   # linear warm-up, cosine decay
            group["lr"] = p.teacher_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / p.teacher_steps))
        _, ctx, x0, objects = run.data(step)
        drop = torch.rand(ctx.shape[0], generator=rng, device=rng.device) < 0.1
        ctx = torch.where(drop[:, None, None].to(ctx.device), torch.zeros_like(ctx), ctx)
        t = sample_chunk_timesteps(x0.shape[0], x0.shape[1], x0.shape[1], rng, sched, run.device)
        eps = torch.randn(x0.shape, generator=rng, device=rng.device).to(run.device)
        v = forward(sched.add_noise(x0, eps, t), t, ctx)
        err = (v - (eps - x0)) ** 2                                             # [B, F, C, h, w]
        if objects is None:
            loss = err.mean()
        else:   # objects are a quarter of the positions and all the prompt is about: weight them up
            weight = 1 + p.object_weight * objects.unsqueeze(2).float()        # [B, F, 1, h, w]
            loss = (weight * err).mean() / weight.mean()
        optimise(loss, opt, teacher, p.grad_clip)
        if step % max(1, p.teacher_steps // 10) == 0:
            run.log(f"teacher step {step}/{p.teacher_steps} loss {loss.item():.4f}")
    teacher.eval().requires_grad_(False)
    run.save(teacher, "teacher", None)
    return teacher


# -- stage 2: ODE pairs and ODE initialisation -------------------------------------------------------------------
def ode_pairs(run: Run, teacher: CausalWanModel) -> tuple[torch.Tensor, torch.Tensor]:
    """-> trajectories [N, K, F, C, h, w], contexts [N, L, 64] (also written to <out>/ode_pairs.safetensors)."""
    p, trajs, ctxs, prompts = run.p, [], [], []
    gen = torch.Generator().manual_seed(p.seed + 2)
    for start in range(0, p.ode_pairs, 32):
        n = min(32, p.ode_pairs - start)
        batch_prompts = [s.prompt for s in sample_scenes(n, TRAIN_SEED + p.seed + 7, start)]
        ctx = run.text(batch_prompts, run.device)
        noise = torch.randn((n, p.frames, *run.latent), generator=gen).to(run.device)
        trajs.append(generate_ode_trajectory(teacher, ctx, None, noise, 48, 5.0, p.ode_guidance, ODE_KEEP).cpu())
        ctxs.append(ctx.cpu())
        prompts += batch_prompts
    trajs, ctxs = torch.cat(trajs), torch.cat(ctxs)
    save_ode_pairs(str(run.out / "ode_pairs.safetensors"), trajs, kept_timesteps(48, 5.0, ODE_KEEP), ctxs, prompts,
                   guidance_scale=p.ode_guidance, keep=ODE_KEEP, dtype=torch.float32)
    return trajs, ctxs


def objective_config(run: Run, chunk: int, rolling_trick: bool = False, rollout_frames: int = -1) -> ObjectiveConfig:
    return ObjectiveConfig(latent_shape=(run.p.frames, *run.latent), chunk_frames=chunk, guidance_scale=run.p.dmd_guidance,
                           critic_updates_per_generator=run.p.critic_ratio, rolling_trick=rolling_trick,
                           rollout_frames=rollout_frames)


def train_loop(run: Run, name: str, objective, steps: int, batch_fn) -> None:
    """Critic/generator alternation for any `Objective`; `batch_fn(step) -> TrainBatch`."""
    p = run.p
    mods = objective.trainable_modules()
    gen_opt = adamw(mods["generator"], p.student_lr)
    critic_opt = adamw(mods["critic"], p.critic_lr) if "critic" in mods else None
    shared = torch.Generator(device=run.device).manual_seed(p.seed + 11)
    local = torch.Generator(device=run.device).manual_seed(p.seed + 13)
    draws = 0
    for step in range(steps):
        info = StepInfo(step, shared, local)
        if critic_opt is not None:
            for _ in range(objective.critic_updates_per_generator):
                loss, _ = objective.critic_loss(batch_fn(draws), info)
                draws += 1
                optimise(loss, critic_opt, mods["critic"], p.grad_clip)
        loss, metrics = objective.generator_loss(batch_fn(draws), info)
        draws += 1
        optimise(loss, gen_opt, mods["generator"], p.grad_clip)
        if step % max(1, steps // 5) == 0:
            run.log(f"{name} step {step}/{steps} " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


def ode_init(run: Run, teacher: CausalWanModel, trajs: torch.Tensor, ctxs: torch.Tensor, chunk: int) -> CausalWanModel:
    student = copy.deepcopy(teacher).requires_grad_(True).train()
    objective = build_objective("ode", objective_config(run, chunk), student)
    gen = torch.Generator().manual_seed(run.p.seed + 3)

    def batch(_):
        idx = torch.randint(0, trajs.shape[0], (run.p.batch,), generator=gen)
        return TrainBatch(ctxs[idx].to(run.device), None, ode_trajectory=trajs[idx].to(run.device))

    train_loop(run, f"ode_init_c{chunk}", objective, run.p.ode_steps, batch)
    run.save(student, f"ode_init_c{chunk}", run.stream_config(chunk, False))
    return student


# -- stage 3: students -------------------------------------------------------------------------------------------
def train_student(run: Run, s: Student, init: CausalWanModel, teacher: CausalWanModel) -> CausalWanModel:
    torch.manual_seed(run.p.seed + 5)
    student = copy.deepcopy(init).requires_grad_(True).train()
    rolled = run.p.rollout_frames if s.method == "self_forcing" and run.p.rollout_frames else -1
    cfg = objective_config(run, s.chunk, s.rolling_trick, rolled)
    if rolled != -1:
        run.log(f"{s.key}: rollouts of {rolled} latent frames, DMD on the last {run.p.frames}")

    def batch(step):
        _, ctx, latents, _ = run.data(10_000 + step)
        return TrainBatch(ctx, None, latents=latents)

    if s.method == "ode_init":
        objective, steps = None, 0
    elif s.many_step:
        objective = build_objective(s.method, cfg, student)
        steps = run.p.forcing_steps
    else:
        critic = copy.deepcopy(teacher).requires_grad_(True).train()
        if s.method == "self_forcing":
            objective = build_objective("dmd", cfg, student, teacher, critic)
        else:
            mode = "teacher_forcing" if s.method == "tf_dmd" else "diffusion_forcing"
            objective = ForcingDMDObjective(mode, cfg, student, teacher, critic)
        steps = run.p.dmd_steps
    if objective is not None:
        train_loop(run, s.key, objective, steps, batch)
    student.eval().requires_grad_(False)
    window = cfg.window() if s.rolling_trick else eval_window(run.p.frames, s.chunk)
    run.save(student, s.key, run.stream_config(s.chunk, s.many_step, window))
    return student


# -- stage 4: evaluation -----------------------------------------------------------------------------------------
def eval_window(frames: int, chunk: int) -> int:
    """Rolling-cache window (latent frames, current chunk included) used beyond the training length."""
    return max(chunk, frames - chunk)


def eval_prompts(run: Run) -> list[str]:
    return [s.prompt for s in sample_scenes(run.p.eval_samples, EVAL_SEED + run.p.seed)]


@torch.no_grad()
def stream_latents(run: Run, model: CausalWanModel, stream: StreamConfig, prompts: list[str], frames: int,
                   seed: int) -> torch.Tensor:
    """Generate `frames` latent frames per prompt with the streaming pipeline -> [B, F, C, h, w] on CPU."""
    pipe = StreamingPipeline(model, stream, device=run.device, spatial_stride=run.space.spatial_stride)
    state = pipe.start(run.text(prompts, run.device), run.p.height, run.p.width, seed=seed, noise=SeededNoise(seed),
                       max_frames=frames)
    return torch.cat([c.latents.cpu() for c in pipe.stream(state, math.ceil(frames / stream.chunk_frames))], 1)[:, :frames]


def teacher_samples(run: Run, teacher: CausalWanModel, prompts: list[str]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(run.p.seed + 17)
    noise = torch.randn((len(prompts), run.p.frames, *run.latent), generator=gen).to(run.device)
    traj = generate_ode_trajectory(teacher, run.text(prompts, run.device), None, noise, 48, 5.0, run.p.ode_guidance, (-1,))
    return traj[:, 0].cpu()


def score(pixels: torch.Tensor, prompts: list[str]) -> dict[str, dict]:
    """Summary of the exact metrics of pixel videos [B, T, 3, H, W] in [0, 1]."""
    return {k: asdict(v) for k, v in summarize(evaluate(pixels, prompts)).items()}


def evaluate_student(run: Run, s: Student, model: CausalWanModel, prompts: list[str]) -> dict[str, dict]:
    out = {}
    for mult in run.p.eval_lengths:
        frames = run.p.frames * mult
        window = -1 if mult == 1 else eval_window(run.p.frames, s.chunk)
        latents = stream_latents(run, model, run.stream_config(s.chunk, s.many_step, window), prompts, frames,
                                 seed=run.p.seed + 100)
        out[str(mult)] = score(run.pixels(latents), prompts)
    return out


# -- stage 5: the report -----------------------------------------------------------------------------------------
def fmt(est: dict) -> str:
    if est["n"] == 0 or math.isnan(est["mean"]):
        return "n/a"
    if math.isnan(est["low"]):
        return f"{est['mean']:.3f}"
    return f"{est['mean']:.3f} ± {(est['high'] - est['low']) / 2:.3f}"


def results_markdown(results: dict) -> str:
    meta, p = results["meta"], results["meta"]["profile"]
    lines = [RESULTS_START, "",
             f"Generated by `{meta['command']}` (profile `{p['name']}`, seed {p['seed']}) on {meta['hardware']}; "
             f"wall time {meta['wall_time_s'] / 60:.1f} min "
             f"({', '.join(f'{k} {v / 60:.1f}' for k, v in meta['stage_times_s'].items())} min). "
             f"Training length {p['frames']} latent frames of {p['height']}×{p['width']} px "
             f"({'learned autoencoder latents, stride 8 × 4' if p.get('latent') == 'autoencoder' else 'exact pixel latents'}); model dim {p['dim']}, "
             f"{p['num_layers']} layers; {p['eval_samples']} held-out prompts (scene seed {EVAL_SEED + p['seed']}); "
             "mean ± half-width of the 95% t-interval over clips."
             + (f" Scored again by `{meta['rescored']['command']}`." if "rescored" in meta else ""), ""]
    header = "| model | chunk | length | " + " | ".join(h for _, h in TABLE_METRICS) + " |"
    rule = "|" + "---|" * (3 + len(TABLE_METRICS))
    for mult in [str(m) for m in p["eval_lengths"]]:
        lines += [f"### {mult}× the training length ({int(mult) * p['frames']} frames"
                  + (", global cache)" if mult == "1" else f", rolling cache of training length − chunk)"), "",
                  header, rule]
        if mult == "1":
            for r in results["references"].values():
                lines.append(f"| {r['label']} | – | {p['frames']} | "
                             + " | ".join(fmt(r["metrics"][k]) for k, _ in TABLE_METRICS) + " |")
        for r in results["students"].values():
            chunk = "chunk-wise (3)" if r["chunk"] == 3 else "frame-wise (1)"
            lines.append(f"| {r['label']} | {chunk} | {int(mult) * p['frames']} | "
                         + " | ".join(fmt(r["metrics"][mult][k]) for k, _ in TABLE_METRICS) + " |")
        lines.append("")
    lines.append(RESULTS_END)
    return "\n".join(lines)


def write_report(results: dict, path: Path) -> None:
    """Replace the generated block of `path` (or create the file around it), keeping the hand-written text."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Reproduction of Table 2 on the toy world\n")
    replace_block(path, RESULTS_START, RESULTS_END, results_markdown(results))


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def reproduce(profile: Profile, device: str, out: Path, report: Path, command: str, init_from: Path | None = None,
              only: set[str] | None = None, autoencoder: Path | None = None) -> dict:
    """The whole pipeline; `init_from` loads autoencoder, teacher and ODE inits from an earlier run's `--out`
    instead of training them (same profile model size), `autoencoder` only the latent space (a file), `only`
    restricts the students (keys like "self_forcing_c3")."""
    run = Run(profile, device, out)
    began = time.perf_counter()
    stage = time.perf_counter()

    def lap(name):
        nonlocal stage
        run.timings[name] = time.perf_counter() - stage
        stage = time.perf_counter()

    chosen = [s for s in students() if only is None or s.key in only]
    chunks = sorted({s.chunk for s in chosen}, reverse=True)
    if profile.latent == "autoencoder":
        if autoencoder is None and init_from is not None:
            autoencoder = init_from / "checkpoints" / "autoencoder.safetensors"
        run.use_space(AutoencoderSpace(autoencoder_stage(run, autoencoder)))
        lap("autoencoder")
    if init_from is not None:
        load = lambda name: load_model(init_from / "checkpoints" / f"{name}.safetensors", device=run.device)[0]
        teacher = load("teacher").eval().requires_grad_(False)
        inits = {c: load(f"ode_init_c{c}") for c in chunks}
        run.log(f"teacher and ODE inits loaded from {init_from}")
    else:
        teacher = train_teacher(run)
        lap("teacher")
        trajs, ctxs = ode_pairs(run, teacher)
        inits = {c: ode_init(run, teacher, trajs, ctxs, c) for c in chunks}
        lap("ode")
    prompts = eval_prompts(run)
    results = {"references": reference_metrics(run, teacher, prompts), "students": {}}
    train_time = eval_time = 0.0
    for s in chosen:
        t0 = time.perf_counter()
        model = train_student(run, s, inits[s.chunk], teacher)
        t1 = time.perf_counter()
        metrics = evaluate_student(run, s, model, prompts)
        train_time, eval_time = train_time + t1 - t0, eval_time + time.perf_counter() - t1
        results["students"][s.key] = {"label": s.label, "method": s.method, "chunk": s.chunk,
                                      "rolling_trick": s.rolling_trick, "metrics": metrics,
                                      "checkpoint": f"checkpoints/{s.key}.safetensors"}
        run.log(f"{s.key}: frame_error " + ", ".join(f"{m}x {metrics[m]['frame_error']['mean']:.4f}" for m in metrics))
    run.timings["students"], run.timings["evaluation"] = train_time, eval_time
    results["meta"] = {"command": command, "profile": asdict(profile), "hardware": hardware(run.device),
                       "torch": torch.__version__, "wall_time_s": time.perf_counter() - began,
                       "stage_times_s": run.timings}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, report)
    run.log(f"done in {results['meta']['wall_time_s'] / 60:.1f} min; table in {report}")
    return results


def reference_metrics(run: Run, teacher: CausalWanModel, prompts: list[str]) -> dict:
    """Ground truth, its autoencoder reconstruction (learned latents only), the teacher and the chance level (an
    untrained DiT of the teacher's shape through the same sampler and decoder), at 1×."""
    p = run.p
    scenes = sample_scenes(p.eval_samples, EVAL_SEED + p.seed)
    truth = render(scenes, run.space.pixel_frames(p.frames), height=p.height, width=p.width)
    references = {"ground_truth": {"label": "Ground truth (renderer)", "metrics": score(truth, prompts)}}
    if p.latent == "autoencoder":
        references["reconstruction"] = {"label": "Ground truth through the autoencoder",
                                        "metrics": score(run.pixels(run.space.encode(truth)), prompts)}
    references["teacher"] = {"label": f"Teacher (bidirectional, 48 Euler steps, CFG {p.ode_guidance:g})",
                             "metrics": score(run.pixels(teacher_samples(run, teacher, prompts)), prompts)}
    torch.manual_seed(p.seed)
    untrained = CausalWanModel(run.model_config, attention="sdpa").to(run.device).eval().requires_grad_(False)
    references["untrained"] = {"label": "Untrained DiT, same sampler (chance level)",
                               "metrics": score(run.pixels(teacher_samples(run, untrained, prompts)), prompts)}
    return references


def rescore(out: Path, report: Path, command: str, device: str = "cpu") -> dict:
    """Evaluate a finished run's checkpoints again (e.g. after refining its decoder with
    `python -m sf_core.toy.autoencoder`), keeping its training record; rewrites results.json and `report`."""
    results = json.loads((out / "results.json").read_text())
    profile = Profile(**{**results["meta"]["profile"], "eval_lengths": tuple(results["meta"]["profile"]["eval_lengths"])})
    began = time.perf_counter()
    run = Run(profile, device, out)
    if profile.latent == "autoencoder":
        run.use_space(AutoencoderSpace(load_autoencoder(out / "checkpoints" / "autoencoder.safetensors", run.device)),
                      pool=False)
    load = lambda name: load_model(out / "checkpoints" / f"{name}.safetensors", device=run.device)[0].eval()
    prompts = eval_prompts(run)
    results["references"] = reference_metrics(run, load("teacher"), prompts)
    by_key = {s.key: s for s in students()}
    for key, r in results["students"].items():
        r["metrics"] = evaluate_student(run, by_key[key], load(key), prompts)
        run.log(f"{key} rescored: adherence " + ", ".join(f"{m}x {r['metrics'][m]['adherence']['mean']:.3f}"
                                                           for m in r["metrics"]))
    results["meta"]["rescored"] = {"command": command, "wall_time_s": time.perf_counter() - began}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, report)
    return results


def best_self_forcing(results: dict, chunk: int | None = None) -> str:
    """Key of the self-forcing student with the lowest frame error at the longest evaluated length."""
    longest = str(max(results["meta"]["profile"]["eval_lengths"]))
    keys = [k for k, r in results["students"].items() if r["method"] == "self_forcing"
            and (chunk is None or r["chunk"] == chunk)]
    return min(keys, key=lambda k: results["students"][k]["metrics"][longest]["frame_error"]["mean"])


def export_default(results: dict, out: Path, folder: Path, chunk: int | None = 3) -> Path:
    """Copy the best self-forcing checkpoint and a manifest into `folder` (the embedded default model)."""
    student, p = results["students"][best_self_forcing(results, chunk)], results["meta"]["profile"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "decoder.safetensors").unlink(missing_ok=True)   # no stale decoder of an earlier model
    shutil.copyfile(out / student["checkpoint"], folder / "model.safetensors")
    decoder, space = {"kind": "toy_pixels"}, "exact pixel latents"
    if p.get("latent") == "autoencoder":
        space = "a learned causal autoencoder (stride 8 × 4)"
        shutil.copyfile(out / "checkpoints" / "autoencoder.safetensors", folder / "decoder.safetensors")
        decoder = {"kind": "toy_autoencoder", "file": "decoder.safetensors"}
    manifest = {"checkpoint": "model.safetensors",
                "text_encoder": {"kind": "toy", "text_dim": 64, "max_len": 24, "seed": 0},
                "decoder": decoder,
                "width": p["width"], "height": p["height"], "fps": 16 if p.get("latent") == "autoencoder" else 8,
                "chunks": 16,
                "prompt": "a red circle moves right and a yellow square orbits on a navy background",
                "description": (f"embedded toy model ({p['width']}×{p['height']} px): {student['label']}, "
                                f"{'chunk-wise' if student['chunk'] == 3 else 'frame-wise'}, dim {p['dim']}, "
                                f"{p['num_layers']} layers, {p['num_heads']} heads, {space}; trained by "
                                f"`{results['meta']['command']}` (see docs/reproduction.md)")}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sf_core.toy.reproduce", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--out", type=Path, default=Path("runs/toy"), help="checkpoints, ODE pairs, results.json")
    ap.add_argument("--report", type=Path, default=Path("docs/reproduction.md"), help="markdown table to update")
    ap.add_argument("--seed", type=int, default=None, help="override the profile's seed")
    ap.add_argument("--export-default", type=Path, default=None, metavar="FOLDER",
                    help="also copy the best chunk-wise self-forcing checkpoint + manifest there "
                         "(sf_core/toy/assets/default for the embedded model)")
    ap.add_argument("--init-from", type=Path, default=None, metavar="RUN",
                    help="load the autoencoder, teacher and ODE inits from an earlier run's --out instead of training them")
    ap.add_argument("--autoencoder", type=Path, default=None, metavar="FILE",
                    help="use this trained toy autoencoder (its latent space) instead of training one")
    ap.add_argument("--only", default=None, help="comma-separated student keys, e.g. self_forcing_c3,df_dmd_c3")
    ap.add_argument("--dmd-steps", type=int, default=None, help="override the profile's DMD generator steps")
    ap.add_argument("--teacher-steps", type=int, default=None, help="override the profile's teacher steps")
    ap.add_argument("--eval-samples", type=int, default=None, help="override the profile's held-out prompt count")
    ap.add_argument("--object-weight", type=float, default=None,
                    help="override the profile's teacher loss weight on object positions (1 + this; 0 = plain)")
    ap.add_argument("--data-pool", type=int, default=None, help="override the profile's encoded training clips")
    ap.add_argument("--outline-weight", type=float, default=None,
                    help="override the profile's autoencoder loss weight near object outlines (1 + this; 0 = plain)")
    ap.add_argument("--shape-code", type=float, default=None,
                    help="override the profile's autoencoder weight tying latent channels 0..2 to each cell's "
                         "circle / square / triangle coverage (0 = none)")
    ap.add_argument("--motion-code", type=float, default=None,
                    help="override the profile's autoencoder weight tying latent channels 3..5 to each cell's "
                         "motion in x, y and size (0 = none; needs >= 6 latent channels)")
    ap.add_argument("--object-code", type=float, default=None,
                    help="override the profile's autoencoder weight tying latent channels 6..8 to each cell's "
                         "coverage by the prompt's objects 1, 2, 3 (0 = none; needs >= 9 latent channels)")
    ap.add_argument("--latent-channels", type=int, default=None,
                    help="override the profile's autoencoder latent channels (the DiT's in / out channels follow)")
    ap.add_argument("--compile-teacher", action=argparse.BooleanOptionalAction, default=None,
                    help="train the teacher through torch.compile (profile default; needs a C++ compiler on CPU; "
                         "~1.1x on 2 threads)")
    ap.add_argument("--rollout-frames", type=int, default=None,
                    help="self forcing rolls out this many latent frames and DMD judges the last training-length "
                         "ones (a multiple of the chunk, >= the training length; profile default 0 = the training length)")
    ap.add_argument("--dmd-guidance", type=float, default=None,
                    help="override the real score's CFG in DMD, cond + g·(cond − uncond) (profile default 0)")
    ap.add_argument("--rescore", action="store_true",
                    help="evaluate the checkpoints of the finished run in --out again (no training)")
    ap.add_argument("--rewrite-report", action="store_true",
                    help="only rewrite --report from <out>/results.json (no training)")
    args = ap.parse_args(argv)
    if args.rewrite_report:
        write_report(json.loads((args.out / "results.json").read_text()), args.report)
        return 0
    command = "python -m sf_core.toy.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.rescore:
        results = rescore(args.out, args.report, command.strip(), args.device)
        if args.export_default is not None:
            export_default(results, args.out, args.export_default)
        return 0
    profile = PROFILES[args.profile]
    overrides = {k: v for k, v in (("seed", args.seed), ("dmd_steps", args.dmd_steps),
                                   ("teacher_steps", args.teacher_steps), ("eval_samples", args.eval_samples),
                                   ("dmd_guidance", args.dmd_guidance), ("object_weight", args.object_weight),
                                   ("data_pool", args.data_pool), ("compile_teacher", args.compile_teacher),
                                   ("autoencoder_outline_weight", args.outline_weight),
                                   ("autoencoder_shape_code", args.shape_code),
                                   ("autoencoder_motion_code", args.motion_code),
                                   ("autoencoder_object_code", args.object_code),
                                   ("latent_channels", args.latent_channels),
                                   ("rollout_frames", args.rollout_frames))
                 if v is not None}
    profile = replace(profile, **overrides)
    non_negative = {"--object-weight": profile.object_weight, "--outline-weight": profile.autoencoder_outline_weight,
                    "--shape-code": profile.autoencoder_shape_code, "--motion-code": profile.autoencoder_motion_code,
                    "--object-code": profile.autoencoder_object_code, "--data-pool": profile.data_pool}
    negative = {k: v for k, v in non_negative.items() if v < 0}
    if negative:
        ap.error(", ".join(f"{k} {v:g}" for k, v in negative.items()) + ": must be >= 0")
    if args.latent_channels is not None and profile.latent != "autoencoder":
        ap.error(f"--latent-channels: profile {profile.name!r} trains in pixel space (12 channels); use a profile "
                 "with learned latents")
    if profile.latent == "autoencoder":
        try:
            autoencoder_config(profile)
        except ValueError as e:
            ap.error(f"profile {profile.name!r} with these overrides: {e}")
    compiler = os.environ.get("CXX", "g++")   # what torch.compile's CPU backend calls
    if profile.compile_teacher and args.init_from is None and args.device == "cpu" and not shutil.which(compiler):
        ap.error(f"--compile-teacher (on in profile {profile.name!r}): torch.compile on CPU needs a C++ compiler, "
                 f"and {compiler!r} ($CXX or g++) is not on PATH; install g++ or pass --no-compile-teacher")
    if profile.rollout_frames and (profile.rollout_frames < profile.frames or profile.rollout_frames % 3):
        ap.error(f"--rollout-frames: got {profile.rollout_frames}; expected 0 or a multiple of 3 (the chunk) of at "
                 f"least the training length {profile.frames}")
    only = None if args.only is None else set(args.only.split(","))
    unknown = sorted((only or set()) - {s.key for s in students()})
    if unknown:
        ap.error(f"--only: unknown students {unknown}; known: {[s.key for s in students()]}")
    if args.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.autoencoder is not None and profile.latent != "autoencoder":
        ap.error(f"--autoencoder: profile {profile.name!r} trains in pixel space; use a profile with learned latents")
    results = reproduce(profile, args.device, args.out, args.report, command.strip(), args.init_from, only,
                        args.autoencoder)
    if args.export_default is not None:
        export_default(results, args.out, args.export_default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
