"""Checkpoint pieces in-process: optimizer flattening, RNG, atomic folders, EMA, LoRA, data sharding, text cache."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from sf_core.weights.checkpoint import write_safetensors_atomic
from sf_core.train.checkpointing import (ResumeError, flatten_optimizer_state, latest_checkpoint, load_checkpoint,
                                         read_tensors, restore_rng, rng_state, save_checkpoint,
                                         unflatten_optimizer_state)
from sf_core.train.data import EmbeddingCache, ShardedCursor, read_prompts
from sf_core.train.distributed import DistContext, seed_everything
from sf_core.train.ema import EMA
from sf_core.train.lora import inject_lora, merge_lora_state_dict

from train_helpers import TINY

CTX = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), strategy="none",
                  mixed_precision=False)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))


def _train(net, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(4, 6, generator=g)).pow(2).mean().backward()
        opt.step()


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    a = _net()
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, betas=(0.0, 0.999), weight_decay=0.01)
    _train(a, opt_a, 3)
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    tensors, meta = flatten_optimizer_state(get_optimizer_state_dict(a, opt_a))
    write_safetensors_atomic(tensors, tmp_path / "optim.safetensors", meta)
    tensors, meta = read_tensors(tmp_path / "optim.safetensors")  # through the file: no shared storage
    assert any(k.endswith(".exp_avg_sq") for k in tensors) and "param_groups" in meta
    b = _net(seed=5)
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.AdamW(b.parameters(), lr=0.5)  # wrong hyper-parameters, replaced by the saved ones
    set_optimizer_state_dict(b, opt_b, unflatten_optimizer_state(tensors, meta))
    assert opt_b.param_groups[0]["betas"] == (0.0, 0.999) and opt_b.param_groups[0]["lr"] == 1e-2
    _train(a, opt_a, 2, seed=7)
    _train(b, opt_b, 2, seed=7)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_rng_states_round_trip():
    shared, local = seed_everything(3, 0)
    tensors, meta = rng_state(shared, local)
    expected = (random.random(), np.random.rand(), torch.rand(2), torch.rand(1, generator=shared),
                torch.randn(1, generator=local))
    seed_everything(99, 0)
    restore_rng(tensors, meta, shared, local)
    got = (random.random(), np.random.rand(), torch.rand(2), torch.rand(1, generator=shared),
           torch.randn(1, generator=local))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert all(torch.equal(x, y) for x, y in zip(got[2:], expected[2:]))


def _save(folder, step, net, opt, ema=None, data=None):
    shared, local = seed_everything(0, 0)
    return save_checkpoint(folder, step, ctx=CTX, modules={"generator": net}, optimizers={"generator": opt},
                           ema=ema, data_state=data or {"prompts": step}, rng=(shared, local), keep=2)


def test_checkpoint_folders_pointer_and_pruning(tmp_path):
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    _train(net, opt, 1)
    for step in (2, 4, 6):
        _save(tmp_path, step, net, opt)
    assert latest_checkpoint(tmp_path).name == "step_00000006"
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000004", "step_00000006"]
    assert not list(tmp_path.glob(".*tmp*"))
    # a crash while assembling the next checkpoint leaves a stale temporary folder: `latest` is unaffected
    (tmp_path / ".step_00000008.tmp").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_00000006"
    # restore into a fresh model
    net2 = _net(seed=9)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-3)
    shared, local = seed_everything(0, 0)
    info = load_checkpoint(latest_checkpoint(tmp_path), ctx=CTX, modules={"generator": net2},
                           optimizers={"generator": opt2}, rng=(shared, local))
    assert info["step"] == 6 and info["data"] == {"prompts": 6}
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters()))


def test_resume_refuses_incomplete_or_mismatched(tmp_path):
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    path = _save(tmp_path, 2, net, opt)
    shared, local = seed_everything(0, 0)
    other = DistContext(0, 2, 0, torch.device("cpu"), "ddp", False)
    with pytest.raises(ResumeError, match="written by 1 ranks, this run has 2"):
        load_checkpoint(path, ctx=other, modules={"generator": net}, optimizers={}, rng=(shared, local))
    with pytest.raises(ResumeError, match="no state for module"):
        load_checkpoint(path, ctx=CTX, modules={"critic": net}, optimizers={}, rng=(shared, local))
    (path / "trainer.json").unlink()
    with pytest.raises(ResumeError, match="incomplete"):
        latest_checkpoint(tmp_path)


def test_ema_starts_from_current_weights_and_follows_the_formula():
    net = _net()
    ema = EMA(net, decay=0.9)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    assert all(torch.equal(before[k], p) for k, p in net.named_parameters())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for k, p in net.named_parameters():
        torch.testing.assert_close(ema.shadow[k], 0.9 * before[k] + 0.1 * p, rtol=0, atol=1e-6)
        assert ema.shadow[k].dtype == torch.float32
    restored = EMA.restore(_net(seed=3), 0.9, ema.state_dict())
    assert all(torch.equal(restored.shadow[k], ema.shadow[k]) for k in ema.shadow)


def test_lora_starts_as_identity_trains_only_adapters_and_merges_exactly(tiny_model):
    from sf_core.model import CausalWanModel
    model = tiny_model.float()
    x = torch.randn(1, 3, 4, 4, 4)
    t = torch.full((1, 3), 500.0)
    ctx = torch.randn(1, 8, 32)
    ref = model(x, t, ctx).detach()
    names = inject_lora(model, rank=4, alpha=8.0, targets=("self_attn.q", "ffn.2"))
    assert names == ["blocks.0.self_attn.q", "blocks.0.ffn.2", "blocks.1.self_attn.q", "blocks.1.ffn.2"]
    torch.testing.assert_close(model(x, t, ctx), ref, rtol=0, atol=0)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_b"):
                p.normal_(0, 0.1)
    out = model(x, t, ctx).detach()
    assert not torch.allclose(out, ref)
    merged = merge_lora_state_dict(model.state_dict(), 8.0 / 4)
    plain = CausalWanModel(model.config, attention="sdpa")
    plain.load_state_dict(merged, strict=True)
    torch.testing.assert_close(plain(x, t, ctx), out, rtol=1e-5, atol=1e-5)


def test_sharded_cursor_partitions_and_resumes():
    ranks = [ShardedCursor(10, seed=1, shuffle=True, rank=r, world=2, batch=2) for r in range(2)]
    seen = [[c.next() for _ in range(5)] for c in ranks]  # 5 global batches of 4 = 2 epochs
    flat = [i for b in range(5) for r in range(2) for i in seen[r][b]]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # a new permutation each epoch
    again = ShardedCursor(10, seed=1, shuffle=True, rank=1, world=2, batch=2)
    again.position = 8  # after two global batches
    assert [again.next() for _ in range(3)] == seen[1][2:]


class _CountingEncoder:
    def __init__(self):
        self.calls = []

    def encode(self, prompts):
        self.calls.append(list(prompts))
        out = torch.zeros(len(prompts), 512, TINY["text_dim"])
        for i, p in enumerate(prompts):
            out[i, :len(p.split())] = float(len(p))
        return out


def test_embedding_cache_encodes_each_prompt_once(tmp_path):
    enc = _CountingEncoder()
    cache = EmbeddingCache(tmp_path, enc, "counting", text_len=TINY["text_len"])
    a = cache.get(["a red fox", "two kites", "a red fox"])
    assert a.shape == (3, TINY["text_len"], TINY["text_dim"]) and torch.equal(a[0], a[2])
    assert enc.calls == [["a red fox", "two kites"]]
    fresh = EmbeddingCache(tmp_path, None, "counting", text_len=TINY["text_len"])  # no encoder: disk only
    assert torch.equal(fresh.get(["two kites"])[0], a[1])
    assert a[1, :2].eq(9.0).all() and a[1, 2:].eq(0).all()
    with pytest.raises(ValueError, match="no text encoder"):
        fresh.get(["never seen"])


def test_read_prompts_skips_blank_lines(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("one\n\n  two  \n")
    assert read_prompts(p) == ["one", "two"]
    p.write_text("\n \n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(p)
