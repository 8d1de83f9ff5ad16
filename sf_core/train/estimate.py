"""`python -m sf_core.train estimate --config FILE --world-size N [--json]`: per-rank peak memory of training.

The run's real modules (generator, critic, teacher), sharded by FSDP2 exactly as `Trainer` does, run one
generator update and one critic update (rollout with KV cache, score forwards, backward, AdamW) under
`FakeTensorMode` with a fake process group of `N` ranks: shapes only, nothing allocated, rank 0's view.
A dispatch-mode tracker follows every storage (and FSDP2's storage resizes of the gathered parameters)
and keeps the breakdown at the peak. Closed form: the sharded parameters, the EMA shadow and the AdamW
state (both from the local shard shapes), the umT5 weights when a text encoder is loaded on each rank.

Keys (bytes): per_rank_peak, parameters (sharded shards + EMA shadow + gathered bf16 copies at the peak),
gradients (sharded, at the peak), optimizer, activations (everything else traced: saved activations,
recomputation, temporaries), rollout_cache (the rollout's KV and cross caches at the peak), text_encoder;
generator_update_peak / critic_update_peak (per_rank_peak is the larger) and peak_phase.
"""
from __future__ import annotations

import contextlib
import json
import sys
import weakref
from pathlib import Path

import torch
import torch.distributed as dist

from sf_core import memory
from sf_core.config import DTYPES, WAN_1_3B, WAN_14B, ModelConfig

from . import rollout as rollout_mod
from .distributed import DistContext, fully_shard_model

BREAKDOWN = ("parameters", "gradients", "activations", "rollout_cache")


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def _bytes(tensors) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors)


def score_config(path: str | None, default: ModelConfig) -> ModelConfig:
    """A teacher/critic's shape: its file's, else by name (…14B… is Wan2.1-14B), else the generator's."""
    if path and Path(path).is_file():
        return memory.config_of_checkpoint(Path(path))
    if path and "14b" in Path(path).name.lower():
        return WAN_14B
    if path and "1.3b" in Path(path).name.lower():
        return WAN_1_3B
    return default


@contextlib.contextmanager
def fake_world(world_size: int):
    from torch.testing._internal.distributed.fake_pg import FakeStore
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


class LabelledTracker(memory.PeakTracker):
    """PeakTracker that labels storages (`label` while they are created) and keeps the live set at the peak;
    storage resizes (FSDP2 frees / re-gathers unsharded parameters so) count as `parameters`."""

    def __init__(self):
        super().__init__()
        self.label = "activations"
        self.sizes: dict[int, tuple[int, str]] = {}
        self.at_peak: dict[int, tuple[int, str]] = {}

    def _count(self, key: int, size: int, label: str) -> None:
        self.live += size - self.sizes.get(key, (0, label))[0]
        self.sizes[key] = (size, label)
        if self.live > self.peak:
            self.peak, self.at_peak = self.live, dict(self.sizes)

    def _track(self, storage, inputs) -> None:
        key = storage._cdata
        if key in self._seen or key in inputs:
            return
        self._seen.add(key)
        self._count(key, storage.nbytes(), self.label)
        weakref.finalize(storage, self._free, key, 0)

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= self.sizes.pop(key, (0, ""))[0]

    def resized(self, storage, new_bytes: int) -> None:
        key = storage._cdata
        if key not in self._seen:
            self._seen.add(key)
            weakref.finalize(storage, self._free, key, 0)
        self._count(key, new_bytes, "parameters")

    @contextlib.contextmanager
    def labelled(self, label: str):
        before, self.label = self.label, label
        try:
            yield
        finally:
            self.label = before

    def breakdown(self, relabel: dict[int, str]) -> dict[str, int]:
        out = dict.fromkeys(BREAKDOWN, 0)
        for key, (size, label) in self.at_peak.items():
            label = relabel.get(key, label)
            out[label] = out.get(label, 0) + size
        return out


@contextlib.contextmanager
def tracking(tracker: LabelledTracker):
    """The tracker on, storage resizes reported to it, rollout caches labelled."""
    resize, allocate = torch.UntypedStorage.resize_, rollout_mod.RolloutCache.allocate.__func__

    def resize_(storage, size):
        out = resize(storage, size)
        tracker.resized(storage, int(size))
        return out

    def allocate_(cls, *a, **k):
        with tracker.labelled("rollout_cache"):
            return allocate(cls, *a, **k)
    torch.UntypedStorage.resize_ = resize_
    rollout_mod.RolloutCache.allocate = classmethod(allocate_)
    try:
        with tracker:
            yield tracker
    finally:
        torch.UntypedStorage.resize_ = resize
        rollout_mod.RolloutCache.allocate = classmethod(allocate)


@contextlib.contextmanager
def traceable_losses():
    """Fake tensors have no values: metrics read as 0.0, the timestep grid is computed for real, and every
    chunk exits at its first denoising step. The exit step does not change what is kept (one gradient
    forward per chunk, the cache allocated once; the no-grad steps before it free what they make), so
    skipping the earlier steps changes no peak and saves tracing time."""
    from .losses import dmd, gan, score, sid
    modules = (dmd, gan, score, sid)

    def value(x):
        return 0.0 if isinstance(x, torch.Tensor) else float(x)
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    draw, grid = rollout_mod.draw_exit_steps, rollout_mod.step_timesteps

    def real_grid(cfg):
        with unset_fake_temporarily():
            return grid(cfg)
    rollout_mod.draw_exit_steps = lambda cfg, rng, device=None: [0] * cfg.num_chunks
    rollout_mod.step_timesteps = real_grid
    for m in modules:
        m.float = value
    try:
        yield
    finally:
        rollout_mod.draw_exit_steps, rollout_mod.step_timesteps = draw, grid
        for m in modules:
            del m.float


def _models(cfg, ctx: DistContext):
    """(generator, teacher, critic) as the Trainer builds them (float32 trainables, the teacher in model.dtype),
    on the meta device, sharded: materialise them with `to_empty` inside FakeTensorMode."""
    from sf_core.model import CausalWanModel
    gen_cfg = cfg.model_config()
    teacher_cfg = score_config(cfg.model.teacher, gen_cfg)
    critic_cfg = score_config(cfg.model.critic, teacher_cfg)
    attention = cfg.model.attention
    with memory.default_dtype(torch.float32), torch.device("meta"):
        generator = CausalWanModel(gen_cfg, attention=attention)
        critic = CausalWanModel(critic_cfg, attention=attention)
    with memory.default_dtype(DTYPES[cfg.model.dtype]), torch.device("meta"):
        teacher = CausalWanModel(teacher_cfg, attention=attention).requires_grad_(False).eval()
    for score in (teacher, critic):
        score.checkpoint_blocks = cfg.train.score_checkpointing
    generator.checkpoint_blocks = cfg.train.gradient_checkpointing and cfg.train.checkpoint_granularity == "block"
    generator, critic = fully_shard_model(generator, ctx), fully_shard_model(critic, ctx)
    if cfg.distributed.shard_frozen:
        teacher = fully_shard_model(teacher, ctx)
    return generator, teacher, critic


def _update(module, optimizer, loss_fn, clip: float) -> None:
    module.zero_grad(set_to_none=True)
    loss_fn()[0].backward()
    torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], clip)
    optimizer.step()


def estimate_training(cfg, world_size: int) -> dict[str, int]:
    """Per-rank peak bytes of one generator update and one critic update (the larger), see the module doc."""
    if cfg.objective.name not in ("dmd", "sid"):
        raise ValueError(f"the estimate covers the dmd and sid objectives, not {cfg.objective.name!r}")
    ctx = DistContext(0, world_size, 0, torch.device("cpu"), "fsdp", cfg.distributed.mixed_precision)
    with fake_world(world_size):
        models = _models(cfg, ctx)  # the device mesh cannot be made under FakeTensorMode
        with memory.fake_mode(allow_non_fake_inputs=True), torch.enable_grad():
            for module in models:
                module.to_empty(device="cpu")
            peaks, resident = _trace_updates(cfg, *models)
    phase = max(peaks, key=lambda n: peaks[n]["traced"])
    out = dict(peaks[phase])
    traced = out.pop("traced")
    out["parameters"] += resident["parameters"]
    out["optimizer"] = resident["optimizer"]
    out["text_encoder"] = _text_encoder_bytes(cfg)
    base = resident["parameters"] + resident["optimizer"] + out["text_encoder"]
    out["per_rank_peak"] = traced + base
    out.update({f"{name}_update_peak": p["traced"] + base for name, p in peaks.items()}, peak_phase=phase)
    return out


def _trace_updates(cfg, generator, teacher, critic) -> tuple[dict, dict]:
    """Trace each update with the steady state in place (AdamW moments, EMA shadow); also the resident
    (untraced) bytes."""
    from .ema import EMA
    from .objectives import StepInfo, TrainBatch, build_objective
    objective = build_objective(cfg.objective.name, cfg.objective_options(), generator, teacher=teacher,
                                critic=critic)
    o = cfg.optim
    optimizers = {"generator": torch.optim.AdamW(generator.parameters(), lr=o.lr_generator, betas=o.betas_generator),
                  "critic": torch.optim.AdamW(critic.parameters(), lr=o.lr_critic, betas=o.betas_critic)}
    mc, b = generator.config, cfg.data.batch_size
    batch = TrainBatch(context=torch.empty(b, mc.text_len, mc.text_dim, dtype=torch.bfloat16),
                       negative_context=torch.empty(b, mc.text_len, mc.text_dim, dtype=torch.bfloat16))
    info = StepInfo(0, torch.Generator(), torch.Generator())
    steps = {"generator": (generator, lambda: objective.generator_loss(batch, info), o.grad_clip_generator),
             "critic": (critic, lambda: objective.critic_loss(batch, info), o.grad_clip_critic)}
    for opt in optimizers.values():
        _adamw_state(opt)
    ema = EMA(generator, cfg.ema.decay) if cfg.ema.enabled else None
    with traceable_losses():
        peaks = {name: _traced_update(module, optimizers[name], loss_fn, clip)
                 for name, (module, loss_fn, clip) in steps.items()}
    params = [*generator.parameters(), *critic.parameters(), *teacher.parameters()]
    states = [t for opt in optimizers.values() for st in opt.state.values() for t in st.values() if t.dim()]
    resident = {"parameters": _bytes(params) + (_bytes(ema.shadow.values()) if ema else 0),
                "optimizer": _bytes(states)}
    return peaks, resident


def _adamw_state(opt: torch.optim.AdamW) -> None:
    """The moments AdamW creates at its first step (so a traced step sees them as already there)."""
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                            "exp_avg_sq": torch.zeros_like(p)}


def _traced_update(module, optimizer, loss_fn, clip: float) -> dict[str, int]:
    tracker = LabelledTracker()
    with tracking(tracker):
        _update(module, optimizer, loss_fn, clip)
    grads = {_local(p.grad).untyped_storage()._cdata: "gradients" for p in module.parameters() if p.grad is not None}
    return {**tracker.breakdown(grads), "traced": tracker.peak}


def _text_encoder_bytes(cfg) -> int:
    """umT5-XXL in bf16 on every rank while `data.text_encoder` is set and not offloaded (the Trainer loads
    it for the embedding cache); 0 with cached embeddings only."""
    if not cfg.data.text_encoder or cfg.data.text_encoder_offload or cfg.data.text_encoder.startswith("tiny:"):
        return 0
    return memory.text_encoder_phase(torch.bfloat16)[0]


def table(est: dict) -> str:
    rows = [*BREAKDOWN[:2], "optimizer", *BREAKDOWN[2:], "text_encoder", "per_rank_peak"]
    lines = [f"{k.replace('_', ' '):>16}: {est[k] / 1e9:8.2f} GB  {est[k]:>16,d} B" for k in rows]
    return "\n".join(lines + [f"{'peak in':>16}: the {est['peak_phase']} update"])


def main_estimate(cfg, world_size: int, as_json: bool) -> int:
    if world_size < 1:
        print(f"error: --world-size must be >= 1, got {world_size}", file=sys.stderr)
        return 2
    try:
        est = estimate_training(cfg, world_size)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(est) if as_json else table(est))
    return 0
