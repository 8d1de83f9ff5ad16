"""Defects that only show at real scale, caught on the CPU: FSDP2 bf16 mixed precision under gloo (exact
timesteps, bf16 rollout cache), block checkpointing of the score networks, the stated torch floor."""
from __future__ import annotations

import re
import tomllib

import pytest
import torch
import torch.distributed as dist

from sf_core.config import ModelConfig
from sf_core.train import rollout as rollout_mod
from sf_core.train.distributed import DistContext, fully_shard_model
from sf_core.train.losses.score import critic_flow_loss
from sf_core.train.loop import Trainer
from sf_core.train.models import random_model
from sf_core.train.rollout import RolloutConfig, rng_noise, self_rollout
from sf_core.scheduler import FlowMatchScheduler

from train_helpers import ROOT
from test_export import _cfg

TINY = ModelConfig(dim=64, ffn_dim=128, num_heads=1, num_layers=2, in_dim=4, out_dim=4, text_dim=32,
                   freq_dim=32, text_len=16)


@pytest.fixture
def bf16_fsdp(tmp_path):
    """A real one-rank gloo process group and FSDP2 with bf16 mixed precision on the CPU."""
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.FileStore(str(tmp_path / "store"), 1))
    try:
        yield DistContext(0, 1, 0, torch.device("cpu"), "fsdp", mixed_precision=True)
    finally:
        dist.destroy_process_group()


def _sharded(ctx):
    return fully_shard_model(random_model(TINY, seed=0, scale=0.05), ctx)


def test_fsdp_mixed_precision_passes_the_exact_timesteps(bf16_fsdp):
    model = _sharded(bf16_fsdp)
    seen = []
    embed = model.embed_time
    model.embed_time = lambda t, frames: (seen.append(t.detach().clone()), embed(t, frames))[1]
    t = torch.tensor([[937.5, 833.3333, 625.0]])  # the warped 4-step grid; bf16 would give 936, 832, 624
    with torch.no_grad():
        model(torch.randn(1, 3, 4, 4, 4), t, torch.randn(1, 16, 32))
    assert seen[0].dtype == torch.float32 and torch.equal(seen[0], t)


def test_rollout_cache_takes_the_mixed_precision_dtype(bf16_fsdp, monkeypatch):
    model = _sharded(bf16_fsdp)
    caches = []
    allocate = rollout_mod.RolloutCache.allocate
    monkeypatch.setattr(rollout_mod.RolloutCache, "allocate", lambda *a, **k: caches.append(allocate(*a, **k)) or caches[-1])
    out = self_rollout(model, torch.randn(1, 16, 32), (4, 4, 4), RolloutConfig(num_frames=3), torch.Generator(),
                       rng_noise(torch.Generator().manual_seed(0)), with_grad=False, exit_steps=[1])
    assert [c.k.dtype for c in caches] == [torch.bfloat16] and out.video.dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the sharded master weights stay float32


def _saved_bytes(fn) -> int:
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved)


def test_trainer_checkpoints_the_critics_blocks(tmp_path):
    trainer = Trainer(_cfg(tmp_path, "model.config.num_layers=4"))
    critic = trainer.objective.critic
    assert critic.checkpoint_blocks and trainer.objective.teacher.checkpoint_blocks
    video = torch.randn(1, 6, 4, 4, 4)
    context = torch.randn(1, 16, 32)

    def loss():
        return critic_flow_loss(critic, video, context, torch.Generator().manual_seed(0), FlowMatchScheduler(5.0))[0]

    def grads():
        critic.zero_grad()
        loss().backward()
        return [p.grad.clone() for p in critic.parameters() if p.grad is not None]

    with_ckpt, g_ckpt = _saved_bytes(loss), grads()
    critic.checkpoint_blocks = False
    without, g_plain = _saved_bytes(loss), grads()
    assert with_ckpt < without / 2  # only block inputs are kept, not every activation inside 4 blocks
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_ckpt, g_plain))


def test_score_checkpointing_can_be_turned_off(tmp_path):
    trainer = Trainer(_cfg(tmp_path, "train.score_checkpointing=false"))
    assert not trainer.objective.critic.checkpoint_blocks


def test_the_stated_torch_floor_has_the_public_fsdp2_api():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.fullmatch(r"torch>=(\d+)\.(\d+)", d) for d in deps if d.startswith("torch"))
    # torch.distributed.fsdp.fully_shard / MixedPrecisionPolicy became public in 2.6 (pytorch#141868)
    assert (int(floor[1]), int(floor[2])) >= (2, 6)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: F401


def _build_on_rank(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    import json
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import sf_core.train.models as models
    import sf_core.train.sharded_init as sharded_init
    from sf_core.train.config import load_config
    from sf_core.train.distributed import shutdown
    from train_helpers import CONFIGS as configs
    reads = []
    for module in (models, sharded_init):
        read = module.load_state_dict
        module.load_state_dict = lambda path, read=read: (reads.append(str(path)), read(path))[1]
    try:
        trainer = Trainer(load_config(configs / "tiny_dmd.yaml", overrides))
        local = [p.to_local().numel() for p in trainer.generator.parameters()]
        full = [p.numel() for p in trainer.generator.parameters()]
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"reads": reads, "local": sum(local), "full": sum(full)}, f)
    finally:
        shutdown()


@pytest.mark.slow
def test_fsdp_ranks_other_than_0_never_read_the_checkpoints(tmp_path):
    """Models are built on the meta device, sharded, and filled from rank 0: rank 1 reads no file."""
    import json
    import socket

    import torch.multiprocessing as mp
    from sf_core.weights.checkpoint import save_safetensors
    from test_export import _cfg as export_cfg
    cfg = export_cfg(tmp_path)
    ckpt = tmp_path / "generator.safetensors"
    save_safetensors(random_model(cfg.model_config(), seed=3, scale=0.05), ckpt)
    overrides = [f"data.prompts={ROOT / 'sf_core/train/configs/tiny_prompts.txt'}", f"run.output_dir={tmp_path / 'run'}",
                 "distributed.strategy=fsdp", f"model.generator={ckpt}", f"model.teacher={ckpt}", f"model.critic={ckpt}"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "built")
    mp.spawn(_build_on_rank, args=(2, port, overrides, out), nprocs=2, join=True)
    got = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    assert got[0]["reads"] == [str(ckpt)] * 3 and got[1]["reads"] == []
    assert all(g["local"] < g["full"] for g in got)  # each rank holds shards


def test_block_granularity_recomputes_one_block_at_a_time():
    """train.checkpoint_granularity=block: same gradients as chunk-level checkpointing, a lower backward peak."""
    from sf_core.memory import PeakTracker
    model = random_model(ModelConfig(dim=64, ffn_dim=256, num_heads=1, num_layers=6, in_dim=4, out_dim=4,
                                     text_dim=32, freq_dim=32, text_len=16), seed=0, scale=0.05)
    params = list(model.parameters())
    context = torch.randn(1, 16, 32)

    def backward(blocks: bool):
        model.checkpoint_blocks = blocks
        out = self_rollout(model, context, (4, 16, 16), RolloutConfig(num_frames=6, gradient_checkpointing=True),
                           torch.Generator(), rng_noise(torch.Generator().manual_seed(0)), exit_steps=[0, 0])
        tracker = PeakTracker()
        with tracker:
            grads = torch.autograd.grad(out.video.pow(2).sum(), params)
        return tracker.peak, grads

    (chunk_peak, chunk_grads), (block_peak, block_grads) = backward(False), backward(True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(chunk_grads, block_grads))
    assert block_peak < 0.7 * chunk_peak
