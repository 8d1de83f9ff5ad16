"""The training loop: official step semantics (selfforcing.md §7.1) plus gradient accumulation and full resume.

One `step`: if step % ratio == 0, a generator update (zero grads, `grad_accum` micro-batches of forward /
backward, gradient sync, clip, AdamW, EMA update); then, for objectives with a critic, a critic update on
new batches; step += 1. `ratio` is the objective's `critic_updates_per_generator` (1 without a critic).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn

from sf_core.config import ModelConfig

from .checkpointing import (export_generator, load_checkpoint, load_ema_state, resume_checkpoint,
                            save_checkpoint)
from .config import TINY_PREFIX, TrainConfig
from .data import BatchSource, EmbeddingCache, latent_dataset, ode_pair_dataset, read_prompts
from .distributed import (DistContext, average_gradients, init_distributed, prepare_frozen, prepare_trainable,
                          seed_everything, shutdown)
from .ema import EMA
from .lora import inject_lora
from .metrics import MetricsLogger
from sf_core.config import DTYPES
from .models import build_models
from .sharded_init import build_sharded_models
from .samples import render_samples

SCORE_OBJECTIVES = ("dmd", "sid", "gan")


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _import_factory(spec: str):
    module, _, name = spec.partition(":")
    mod = importlib.import_module(module)
    return mod, getattr(mod, name)


class Trainer:
    """Owns the models, optimizers, data and state of one run; `run()` trains until `run.max_steps`."""

    def __init__(self, cfg: TrainConfig, decode_fn=None, ctx: DistContext | None = None):
        self.cfg, self.decode_fn = cfg, decode_fn
        self.ctx = ctx or init_distributed(cfg.distributed)
        self.out = Path(cfg.run.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        if self.ctx.device.type == "cuda" and cfg.train.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.shared_rng, self.local_rng = seed_everything(cfg.run.seed, self.ctx.rank)
        self.model_config: ModelConfig = cfg.model_config()
        self.stream_config = cfg.stream_config()
        self._build_models()
        self._build_data()
        self.step, self.ema = 0, None
        self.logger = MetricsLogger(self.out, cfg, self.ctx.is_main)
        self._resume()

    # -- set-up ------------------------------------------------------------------------------------------------
    def _build_models(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        mod, factory = _import_factory(cfg.objective.factory)
        self.TrainBatch, self.StepInfo = mod.TrainBatch, mod.StepInfo
        need_scores = cfg.objective.name in SCORE_OBJECTIVES
        sharded = ctx.strategy == "fsdp" and not cfg.lora.enabled  # LoRA adapters are injected before sharding
        if sharded:  # meta device, shard, rank 0 fills the shards: no full copy on any other rank
            generator, teacher, critic = build_sharded_models(cfg.model, self.model_config, need_scores, ctx,
                                                              cfg.distributed.shard_frozen)
        else:
            generator, teacher, critic = build_models(cfg.model, self.model_config, need_scores)
        if generator.config != self.model_config and cfg.model.generator:
            self.model_config = generator.config  # a checkpoint's own shape wins over the (default) section
        self.lora_scale = None
        if cfg.lora.enabled:
            inject_lora(generator, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets)
            self.lora_scale = cfg.lora.alpha / cfg.lora.rank
        for score in (teacher, critic):
            if score is not None:
                score.checkpoint_blocks = cfg.train.score_checkpointing
        generator.checkpoint_blocks = cfg.train.gradient_checkpointing and cfg.train.checkpoint_granularity == "block"
        if not sharded:
            generator = prepare_trainable(generator, ctx)
            if teacher is not None:
                teacher = prepare_frozen(teacher.to(DTYPES[cfg.model.dtype]), ctx, cfg.distributed.shard_frozen)
            if critic is not None:
                critic = prepare_trainable(critic, ctx)
        self.objective = factory(cfg.objective.name, cfg.objective_options(), generator, teacher=teacher,
                                 critic=critic, discriminator=None)
        self.modules: dict[str, nn.Module] = dict(self.objective.trainable_modules())
        for name, module in self.modules.items():
            if module is not generator and module is not critic:
                self.modules[name] = prepare_trainable(module, ctx)  # e.g. a discriminator head made by the objective
        self.generator = self.modules["generator"]
        self.has_critic = any(n != "generator" for n in self.modules)
        self.ratio = self.objective.critic_updates_per_generator if self.has_critic else 1
        o = cfg.optim
        hp = {"generator": (o.lr_generator, o.betas_generator, o.weight_decay_generator),
              "critic": (o.lr_critic, o.betas_critic, o.weight_decay_critic),
              "discriminator": (o.lr_critic * o.discriminator_lr_multiplier, o.betas_critic, o.weight_decay_critic)}
        self.optimizers = {}
        for name, module in self.modules.items():
            lr, betas, wd = hp.get(name, hp["critic"])
            params = [p for p in module.parameters() if p.requires_grad]
            self.optimizers[name] = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=wd)
        self.clip = {"generator": o.grad_clip_generator}

    def _build_data(self) -> None:
        cfg, ctx, d = self.cfg, self.ctx, self.cfg.data
        embeddings = None
        if d.prompts or d.text_encoder or d.embeddings_cache:
            embeddings = embedding_cache(cfg, ctx, self.model_config.text_len)
        self.embeddings = embeddings
        self.prompts = read_prompts(d.prompts) if d.prompts else None
        self.data = BatchSource(
            prompts=self.prompts, embeddings=embeddings,
            negative_prompt=d.negative_prompt if embeddings is not None else None,
            ode_pairs=ode_pair_dataset(d.ode_pairs) if d.ode_pairs else None,
            latents=latent_dataset(d.latents) if d.latents else None,
            seed=cfg.run.seed, shuffle=d.shuffle, rank=ctx.rank, world=ctx.world_size, batch=d.batch_size)

    def _resume(self) -> None:
        cfg = self.cfg
        if cfg.run.resume == "never":
            path = None
        elif cfg.run.resume == "auto":
            path, skipped = resume_checkpoint(self.ckpt_dir)
            for note in skipped:
                self.logger.note(note)
        else:
            path = Path(cfg.run.resume)
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        if path is None:
            self.logger.start(0)
            return
        info = load_checkpoint(path, ctx=self.ctx, modules=self.modules, optimizers=self.optimizers,
                               rng=(self.shared_rng, self.local_rng))
        self.step = int(info["step"])
        self.data.load_state_dict(info["data"])
        if info.get("ema"):
            self.ema = EMA.restore(self.generator, cfg.ema.decay, load_ema_state(path))
        self.logger.start(self.step)
        self.logger.note(f"resumed from {path} at step {self.step}")

    # -- one update ---------------------------------------------------------------------------------------------
    def _batch(self):
        fields = self.data.next()
        dev = self.ctx.device
        return self.TrainBatch(**{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in fields.items()})

    def _update(self, phase: str, loss_fn, names: list[str], info) -> dict[str, float]:
        accum = self.cfg.optim.grad_accum
        for module in self.modules.values():
            module.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        for micro in range(accum):
            for name in names:
                if hasattr(self.modules[name], "set_requires_gradient_sync"):  # FSDP2: reduce on the last one
                    self.modules[name].set_requires_gradient_sync(micro == accum - 1)
            out = loss_fn(self._batch(), info)
            if out is None:
                return {}
            loss, metrics = out
            (loss / accum).backward()
            sums["loss"] += float(loss.detach()) / accum
            for k, v in metrics.items():
                sums[k] += float(v) / accum
        for name in names:
            params = [p for p in self.modules[name].parameters() if p.requires_grad]
            average_gradients(params, self.ctx)
            clip = self.clip.get(name, self.cfg.optim.grad_clip_critic)
            sums[f"grad_norm_{name}"] = float(_full(torch.nn.utils.clip_grad_norm_(params, clip)))
            self.optimizers[name].step()
        return {f"{phase}/{k}": self.ctx.all_mean(v) for k, v in sums.items()}

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        if cfg.ema.enabled and self.ema is None and self.step >= cfg.ema.start_step:
            self.ema = EMA(self.generator, cfg.ema.decay)
        info = self.StepInfo(step=self.step, shared_rng=self.shared_rng, local_rng=self.local_rng)
        metrics = {}
        if self.step % self.ratio == 0:
            metrics.update(self._update("generator", self.objective.generator_loss, ["generator"], info))
            if self.ema is not None:
                self.ema.update(self.generator)
        if self.has_critic:
            metrics.update(self._update("critic", self.objective.critic_loss,
                                        [n for n in self.modules if n != "generator"], info))
        self.step += 1
        return metrics

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self) -> Path:
        return save_checkpoint(self.ckpt_dir, self.step, ctx=self.ctx, modules=self.modules,
                               optimizers=self.optimizers, ema=self.ema, data_state=self.data.state_dict(),
                               rng=(self.shared_rng, self.local_rng), keep=self.cfg.run.keep_checkpoints,
                               extra={"objective": self.cfg.objective.name},
                               sharded=self.cfg.run.checkpoint_format == "sharded")

    def export(self, path: str | Path | None = None) -> Path | None:
        """Collective. Rank 0 writes the generator (EMA if present, LoRA merged) as our safetensors."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(self.generator, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        ema = self.ema.state_dict() if self.ema is not None else None
        path = Path(path or self.out / self.cfg.run.export_name)
        if self.ctx.is_main:
            export_generator(sd, ema, path, self.model_config, self.stream_config, self.lora_scale,
                             DTYPES[self.cfg.model.dtype])
        self.ctx.barrier()
        return path if self.ctx.is_main else None

    def samples(self) -> None:
        s = self.cfg.samples
        prompts = list(s.prompts) or (self.prompts[:1] if self.prompts else [])
        if not prompts or self.embeddings is None:
            return
        render_samples(self.generator, self.stream_config, self.embeddings.get(prompts).to(self.ctx.device),
                       prompts, self.cfg.data.latent_height, self.cfg.data.latent_width, s.num_chunks, s.seed,
                       self.out / "samples" / f"step_{self.step:08d}", self.ctx, self.decode_fn)

    # -- the loop ---------------------------------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        self.logger.note(f"rank {self.ctx.rank}/{self.ctx.world_size} on {self.ctx.device}, strategy "
                         f"{self.ctx.strategy}, objective {cfg.objective.name}, step {self.step}/{cfg.run.max_steps}")
        bar = self.logger.progress(cfg.run.max_steps, self.step)
        saved_at = None
        while self.step < cfg.run.max_steps:
            metrics = self.train_step()
            self.logger.log(self.step - 1, metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k.split("/")[0][:3] + "_loss": f"{v:.4g}" for k, v in metrics.items()
                                 if k.endswith("/loss")})
            if self.step % cfg.run.checkpoint_every == 0:
                self.save()
                saved_at = self.step
            if cfg.samples.every and self.step % cfg.samples.every == 0:
                self.samples()
        if bar is not None:
            bar.close()
        if saved_at != self.step:
            self.save()
        self.export()
        self.logger.close()


def tiny_text_encoder(out: Path, ctx: DistContext) -> Path:
    """`data.text_encoder: tiny:umt5` — a tiny random umT5 (tests, smoke runs), written once by rank 0."""
    from sf_core.testing.tiny import make_tiny_umt5
    path = Path(out) / "tiny_umt5.safetensors"
    if ctx.is_main and not path.is_file():
        tmp = make_tiny_umt5(Path(out) / f".tiny_umt5.{os.getpid()}.safetensors")
        os.replace(tmp, path)
    ctx.barrier()
    return path


def embedding_cache(cfg: TrainConfig, ctx: DistContext, text_len: int) -> EmbeddingCache:
    """The run's text-embedding cache, with the configured umT5 encoder (None: cached prompts only)."""
    d = cfg.data
    encoder, encoder_id = None, None
    weights = d.text_encoder
    if weights and weights.startswith(TINY_PREFIX):
        weights = tiny_text_encoder(Path(cfg.run.output_dir), ctx)
    if weights:
        from sf_core.text.encoder import TextEncoder
        dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
        encoder = TextEncoder.load(weights, d.tokenizer, dtype=dtype, device=ctx.device, seq_len=text_len,
                                   offload=d.text_encoder_offload)
        encoder_id = f"{Path(weights).name}:{os.stat(weights).st_size}:{text_len}:{dtype}"
    return EmbeddingCache(d.embeddings_cache or Path(cfg.run.output_dir) / "text_cache", encoder, encoder_id, text_len)


def encode_prompts(cfg: TrainConfig, batch: int = 16) -> int:
    """Fill the embedding cache for every prompt of `data.prompts` (and the negative prompt) in one process
    on `distributed.device`, so training never loads the text encoder; returns the number of prompts."""
    ctx = init_distributed(cfg.distributed)
    cache = embedding_cache(cfg, ctx, cfg.model_config().text_len)
    prompts = read_prompts(cfg.data.prompts) + [cfg.data.negative_prompt]
    for i in range(0, len(prompts), batch):
        cache.get(prompts[i:i + batch])
    return len(prompts)


def main_train(cfg: TrainConfig, decode_fn=None) -> None:
    ctx = init_distributed(cfg.distributed)
    try:
        if ctx.is_main:
            print("resolved config:\n" + cfg.to_yaml(), file=sys.stderr, flush=True)
        Trainer(cfg, decode_fn, ctx).run()
    finally:
        shutdown()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The `metrics.jsonl` records of a run (one per step)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
