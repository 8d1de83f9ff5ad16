"""Which CPU speed levers does the embedded default's training have? One teacher step of the `default` toy
profile (the stage that takes half of its 60-minute budget) in float32 eager, under bfloat16 autocast, and
under `torch.compile`, in interleaved rounds (benchmarks/repeats.py); prints wall time per step and each
variant's per-round ratio to eager (> 1 = faster than eager).

    OMP_NUM_THREADS=2 python benchmarks/toy_train_speed.py --threads 2 --rounds 5 --steps 10

Wall time: the budget is wall time on a 2-core machine. Weights and data are random (the cost does not
depend on their values); shapes are the profile's: batch 16 × 9 latent frames × 16 × 8 × 8, dim 128, 4 layers.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.repeats import rounds, spread, timed  # noqa: E402
from sf_core.config import ModelConfig  # noqa: E402
from sf_core.model import CausalWanModel  # noqa: E402
from sf_core.scheduler import FlowMatchScheduler  # noqa: E402
from sf_core.toy.autoencoder import SPATIAL_STRIDE  # noqa: E402
from sf_core.toy.reproduce import PROFILES  # noqa: E402

VARIANTS = ("float32 eager", "bfloat16 autocast", "torch.compile")


def teacher_step(variant: str):
    """A closure running one training step of a fresh default-profile teacher (compiled on first call)."""
    p = PROFILES["default"]
    c, h, w = p.latent_channels, p.height // SPATIAL_STRIDE, p.width // SPATIAL_STRIDE
    cfg = ModelConfig(dim=p.dim, ffn_dim=p.ffn_dim, num_heads=p.num_heads, num_layers=p.num_layers, in_dim=c,
                      out_dim=c, text_dim=64, freq_dim=64, text_len=24)   # as sf_core.toy.reproduce.Run builds it
    torch.manual_seed(0)
    model = CausalWanModel(cfg, attention="sdpa")
    forward = torch.compile(model) if variant == "torch.compile" else model
    opt = torch.optim.AdamW(model.parameters(), lr=p.teacher_lr)
    sched = FlowMatchScheduler(5.0)
    x0, ctx = torch.randn(p.batch, p.frames, c, h, w), torch.randn(p.batch, 24, 64)   # [B, F, C, h, w], [B, L, D]

    def step() -> float:
        t = torch.rand(p.batch, p.frames) * 1000
        eps = torch.randn_like(x0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bfloat16 autocast"):
            v = forward(sched.add_noise(x0, eps, t), t, ctx)
        loss = (v.float() - (eps - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="teacher steps per variant per round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {v: teacher_step(v) for v in VARIANTS}
    for v in VARIANTS:   # warm-up (and compilation) outside the timed rounds
        for _ in range(3):
            loss = steps[v]()
        if not torch.isfinite(torch.tensor(loss)):
            raise SystemExit(f"{v}: loss {loss} is not finite")
    per_step: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _, v in rounds(list(VARIANTS), args.rounds):
        _, sample = timed(lambda: [steps[v]() for _ in range(args.steps)])
        per_step[v].append(sample.wall / args.steps)
    p = PROFILES["default"]
    print(f"teacher step of the `default` profile, {args.threads} threads, {args.rounds} rounds × {args.steps} steps, "
          f"torch {torch.__version__}\n")
    print("| variant | ms / step, median (min–max) | speed vs eager, per round | teacher stage at this speed (min) |")
    print("|---|---|---|---|")
    for v in VARIANTS:
        speedup = [e / x for e, x in zip(per_step[VARIANTS[0]], per_step[v])]
        print(f"| {v} | {spread(per_step[v], scale=1000)} | {spread(speedup, '{:.2f}')} | "
              f"{statistics.median(per_step[v]) * p.teacher_steps / 60:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
