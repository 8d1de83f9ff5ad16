"""FSDP2 model set-up without full copies on every rank: build on the meta device, shard, materialise the
local shards on the device, then fill them from rank 0.

Rank 0 alone reads each checkpoint (or draws the random initialisation) into a host state dict, one model at
a time; `set_model_state_dict(..., broadcast_from_rank0=True)` sends every tensor once and each rank keeps
its shard. Host memory: one model's state dict on rank 0 (before: generator, critic and teacher in float32
on every rank — 68 GB a rank with the 14B teacher); device memory: shards only (before: every model moved
to the GPU unsharded first).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from sf_core.config import DTYPES, ModelConfig
from sf_core.model import CausalWanModel
from sf_core.weights.checkpoint import check_state_dict, load_state_dict, model_config_from

from .distributed import DistContext, fully_shard_model
from .models import random_model


def _read(path: str) -> tuple[dict, ModelConfig]:
    sd, meta = load_state_dict(path)
    cfg = model_config_from(sd, meta, str(path))
    check_state_dict(sd, cfg, str(path))
    return sd, cfg


def _materialise(config: ModelConfig, sd: dict | None, ctx: DistContext, dtype: torch.dtype, attention: str,
                 frozen: bool, shard: bool) -> nn.Module:
    """A sharded (or, unsharded, replicated) module filled from rank 0's `sd` (None on other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = CausalWanModel(config, attention=attention)
    finally:
        torch.set_default_dtype(before)
    if frozen:
        model.requires_grad_(False).eval()
    if shard:
        fully_shard_model(model, ctx)
    model.to_empty(device=ctx.device)
    full = {k: v.to(dtype) for k, v in sd.items()} if sd is not None else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def build_sharded_models(model_section, model_config: ModelConfig, need_scores: bool, ctx: DistContext,
                         shard_frozen: bool):
    """(generator, teacher, critic) like `models.build_models`, already placed and sharded; teacher/critic
    None unless `need_scores`. Same copy rules: no teacher path = the generator's start weights, no critic
    path = the teacher's."""
    m = model_section
    main = ctx.is_main

    def source(path: str | None, fallback: tuple[dict, ModelConfig] | None):
        if not main:
            return None, None
        if path:
            return _read(path)
        if fallback is not None:
            return fallback
        return random_model(model_config, m.init_seed, m.init_scale, m.attention).state_dict(), model_config

    gen_sd, gen_cfg = source(m.generator, None)
    gen_cfg = ctx.broadcast_object(gen_cfg)
    generator = _materialise(gen_cfg, gen_sd, ctx, torch.float32, m.attention, False, True)
    if not need_scores:
        return generator, None, None
    teacher_src = source(m.teacher, (gen_sd, gen_cfg))
    del gen_sd
    teacher_cfg = ctx.broadcast_object(teacher_src[1])
    teacher = _materialise(teacher_cfg, teacher_src[0], ctx, DTYPES[m.dtype], m.attention, True, shard_frozen)
    critic_src = source(m.critic, teacher_src)
    del teacher_src
    critic_cfg = ctx.broadcast_object(critic_src[1])
    critic = _materialise(critic_cfg, critic_src[0], ctx, torch.float32, m.attention, False, True)
    return generator, teacher, critic
