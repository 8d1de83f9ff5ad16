"""Process group, device, seeds and model wrapping for one process or a `torchrun` job.

Two ways to keep ranks in sync:
- **FSDP2** (`fully_shard` per transformer block, then the root): parameters sharded across ranks,
  bf16 compute with fp32 gradient reduction on CUDA (`MixedPrecisionPolicy`). Works on CPU/gloo too
  (fp32 there).
- **Data parallel** fallback: full replicas, identical at start (broadcast from rank 0), gradients
  averaged with one all-reduce per parameter after backward. It works with any call pattern (chunked
  rollouts with a KV cache, `forward_parallel`, several forwards per loss), unlike DDP hooks.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .config import DistributedSection


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    strategy: str                  # fsdp | ddp | none
    mixed_precision: bool          # FSDP2 bf16 params (CUDA only)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        """The main rank's value of a picklable object, on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_mean(self, value: float) -> float:
        """Mean of a scalar over ranks (for logging)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return float(t) / self.world_size

    @property
    def comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def init_distributed(cfg: DistributedSection) -> DistContext:
    """Read the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a plain
    process is rank 0 of 1. nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("distributed.device=cuda but no CUDA device is visible; use distributed.device=cpu")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=timedelta(minutes=cfg.timeout_minutes),
                                device_id=device if device.type == "cuda" else None)
    strategy = cfg.strategy
    if strategy == "auto":
        strategy = "fsdp" if device.type == "cuda" and world > 1 else ("ddp" if world > 1 else "none")
    if world == 1:
        strategy = "none"
    return DistContext(rank, world, local, device, strategy, cfg.mixed_precision and device.type == "cuda")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int) -> tuple[torch.Generator, torch.Generator]:
    """Seed python/numpy/torch with `seed + rank`; return (shared_rng, local_rng) CPU generators:
    shared_rng is seeded identically on every rank (exit steps, block counts), local_rng per rank."""
    local_seed = seed + rank
    random.seed(local_seed)
    np.random.seed(local_seed % 2**32)
    torch.manual_seed(local_seed)
    shared = torch.Generator().manual_seed(seed)
    local = torch.Generator().manual_seed(seed * 1_000_003 + rank + 1)
    return shared, local


# -- wrapping ------------------------------------------------------------------------------------------------
def _mixed_precision_policy(ctx: DistContext):
    from torch.distributed.fsdp import MixedPrecisionPolicy
    if not ctx.mixed_precision:
        return MixedPrecisionPolicy()
    # cast_forward_inputs=False: float32 timesteps reach the model exactly (937.5, not bf16's 936), as in the
    # official trainer; the model casts activations to its parameter dtype itself
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)


def fully_shard_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """FSDP2: shard each transformer block, then the root (embeddings, head)."""
    from torch.distributed.fsdp import fully_shard
    policy = _mixed_precision_policy(ctx)
    blocks = getattr(model, "blocks", None)
    for block in blocks if blocks is not None else ():
        fully_shard(block, mp_policy=policy)
    # the root too: a trailing no-grad forward (the rollout's cache pass) must not leave it unsharded
    fully_shard(model, mp_policy=policy, reshard_after_forward=True)
    if policy.param_dtype is not None:
        model.compute_dtype = policy.param_dtype  # what forwards run in; the sharded parameters stay float32
    return model


def broadcast_parameters(model: nn.Module, ctx: DistContext) -> None:
    """Make every rank's replica equal to rank 0's (parameters and buffers)."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def prepare_trainable(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Place a trainable module and synchronise it according to the strategy."""
    model.to(ctx.device)
    if ctx.strategy == "fsdp":
        return fully_shard_model(model, ctx)
    broadcast_parameters(model, ctx)
    return model


def prepare_frozen(model: nn.Module, ctx: DistContext, shard: bool) -> nn.Module:
    """Teacher / text encoder: no gradients, optionally sharded (FSDP only)."""
    model.requires_grad_(False).eval()
    model.to(ctx.device)
    if ctx.strategy == "fsdp" and shard:
        return fully_shard_model(model, ctx)
    return model


def average_gradients(params, ctx: DistContext) -> None:
    """Data-parallel fallback: average every gradient over ranks after backward.

    FSDP2 reduces gradients itself; a single process has nothing to do. A parameter that received a
    gradient on some rank only gets zeros elsewhere; one that received none anywhere keeps `grad=None`
    (so AdamW skips it on every rank alike).
    """
    if ctx.strategy != "ddp" or not ctx.distributed:
        return
    params = [p for p in params if p.requires_grad]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=ctx.comm_device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    for p, any_grad in zip(params, has.tolist()):
        if not any_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(ctx.world_size)
