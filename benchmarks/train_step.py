"""Training-iteration cost: self forcing (DMD) vs teacher forcing vs diffusion forcing, same settings.

Each method runs in its own process (clean peak-memory numbers). One iteration = one generator update:
forward + backward of the objective's generator loss (+ AdamW step); "self forcing (+critic)" adds the
critic update that the official loop runs every step (selfforcing.md §7.1), i.e. the cost of one
generator step of the 1:5 schedule is `generator + critic` and the four critic-only steps cost `critic`.
Weights are random (cost does not depend on their values); the teacher has the generator's shape.

Time: wall clock on GPU; on CPU the process's CPU time with one thread (robust on a shared machine).
Memory: "saved MiB" = bytes of the distinct storages autograd keeps for backward at the end of the loss
forward (the activation memory of the iteration, device independent); on GPU also the CUDA peak
allocated (torch.cuda.max_memory_allocated), which includes weights, gradients and optimizer state.

    python benchmarks/train_step.py                           # tiny model on CPU (seconds)
    python benchmarks/train_step.py --device cuda --full      # Wan2.1 1.3B, 21×60×104 latents, bf16
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sf_core.config import WAN_1_3B, ModelConfig  # noqa: E402

TINY = ModelConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=2, in_dim=4, out_dim=4, text_dim=32,
                   freq_dim=32, text_len=16)
METHODS = ("self_forcing", "self_forcing+critic", "teacher_forcing", "diffusion_forcing")


def settings(full: bool, frames: int | None) -> dict:
    if full:
        return {"model": WAN_1_3B, "latent": (frames or 21, 16, 60, 104), "dtype": "bfloat16", "text_len": 512}
    return {"model": TINY, "latent": (frames or 21, 4, 8, 8), "dtype": "float32", "text_len": 16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _measure(method: str, full: bool, frames: int | None, device: str, iters: int, warmup: int,
             checkpointing: bool, queue) -> None:
    from sf_core.train.models import random_model
    from sf_core.train.objectives import StepInfo, TrainBatch, build_objective
    s = settings(full, frames)
    dev = torch.device(device)
    dtype = getattr(torch, s["dtype"])
    cfg: ModelConfig = s["model"]
    f, c, h, w = s["latent"]
    gen = random_model(cfg, seed=0, scale=0.0 if full else 0.05).to(dev, dtype)
    sf = method.startswith("self_forcing")
    teacher = random_model(cfg, seed=1, scale=0.0 if full else 0.05).to(dev, dtype).requires_grad_(False) if sf else None
    critic = random_model(cfg, seed=2, scale=0.0 if full else 0.05).to(dev, dtype) if sf else None
    name = "dmd" if sf else method
    obj = build_objective(name, {"latent_shape": [f, c, h, w], "gradient_checkpointing": checkpointing,
                                 "critic_updates_per_generator": 1}, gen, teacher=teacher, critic=critic)
    opt_g = torch.optim.AdamW([p for p in gen.parameters() if p.requires_grad], lr=1e-6, betas=(0.0, 0.999))
    opt_c = torch.optim.AdamW(critic.parameters(), lr=1e-7, betas=(0.0, 0.999)) if sf else None
    g = torch.Generator().manual_seed(0)
    context = torch.randn(1, s["text_len"], cfg.text_dim, generator=g).to(dev, dtype)
    latents = torch.randn(1, f, c, h, w, generator=g).to(dev, dtype)
    batch = TrainBatch(context=context, negative_context=torch.zeros_like(context), latents=latents)
    info = StepInfo(step=0, shared_rng=torch.Generator().manual_seed(1), local_rng=torch.Generator().manual_seed(2))

    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        saved[st.data_ptr()] = st.nbytes()
        return t

    def loss_and_backward(loss_fn, opt) -> int:
        saved.clear()
        opt.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = loss_fn(batch, info)
        nbytes = sum(saved.values())
        loss.backward()
        opt.step()
        return nbytes

    def iteration() -> int:
        nbytes = loss_and_backward(obj.generator_loss, opt_g)
        if method == "self_forcing+critic":
            nbytes = max(nbytes, loss_and_backward(obj.critic_loss, opt_c))
        return nbytes

    clock = time.perf_counter if dev.type == "cuda" else time.process_time
    if dev.type == "cpu":
        torch.set_num_threads(1)
    for _ in range(warmup):
        iteration()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, saved_max = [], 0
    for _ in range(iters):
        _sync(dev)
        t0 = clock()
        saved_max = max(saved_max, iteration())
        _sync(dev)
        times.append(clock() - t0)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
    queue.put({"method": method, "median_s": statistics.median(times), "min_s": min(times),
               "saved_mib": saved_max / 2**20, "peak_mib": peak, "iters": iters})


def run(method, args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(method, args.full, args.frames, args.device, args.iters, args.warmup,
                                           not args.no_checkpointing, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        return {"method": method, "error": f"exit code {p.exitcode}"}
    return q.get()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full", action="store_true", help="Wan2.1 1.3B at 21×60×104 latents (needs a GPU)")
    ap.add_argument("--frames", type=int, default=None, help="latent frames (default 21)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-checkpointing", action="store_true", help="disable per-chunk gradient checkpointing")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    s = settings(args.full, args.frames)
    rows = [run(m, args) for m in args.methods]
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"model dim {s['model'].dim} × {s['model'].num_layers} layers, latents {s['latent']}, {s['dtype']}, "
          f"{args.device} ({dev}), torch {torch.__version__}, median of {args.iters} after {args.warmup} warm-up")
    clock = "wall s" if args.device.startswith("cuda") else "CPU s (1 thread)"
    print(f"| method | {clock} / iteration, median | min | saved for backward, MiB | CUDA peak MiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | {r['error']} | | | |")
        else:
            print(f"| {r['method']} | {r['median_s']:.4f} | {r['min_s']:.4f} | {r['saved_mib']:.2f} | "
                  f"{r['peak_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": {k: str(v) for k, v in s.items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
