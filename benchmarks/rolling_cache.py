"""Per-chunk cost vs stream length: rolling KV cache vs growing global cache vs recomputing without a cache.

CPU, tiny config by default. Prints a table of per-chunk process CPU time (per repeat: the median over the
5 chunks around each probe point; then median (min–max) over --repeats repeats) and memory held by the
stream (KV cache or recomputed context) at increasing chunk indices. The modes advance in lockstep, one
chunk each in turn in a rotated order, so machine noise hits them alike; ratios are taken per repeat.

    python benchmarks/rolling_cache.py --chunks 1000 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sf_core.cache import KVCache  # noqa: E402
from sf_core.config import ModelConfig, StreamConfig  # noqa: E402
from sf_core.model import CausalWanModel  # noqa: E402
from sf_core.pipeline import StreamingPipeline  # noqa: E402
from benchmarks.repeats import Stopwatch, rounds, spread  # noqa: E402

TINY = ModelConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=2, in_dim=4, out_dim=4, text_dim=32,
                   freq_dim=32, text_len=16)


def rolling_or_global(pipe, ctx, size, chunks, window):
    """Chunk-wise generation with the pipeline; yields (chunk, seconds, KV bytes held) per chunk."""
    state = pipe.start(ctx, size, size, seed=0, max_frames=chunks * pipe.config.chunk_frames)
    for k in range(chunks):
        watch = Stopwatch()
        pipe.step(state)
        dt = watch.read().cpu
        held = state.cache.local_end * 2 * state.cache.k[:, :, :1].numel() * state.cache.k.element_size()
        yield k, dt, held


@torch.no_grad()
def recompute(pipe, ctx, size, chunks, window):
    """No cache reuse: every chunk re-encodes its whole visible context (all history, or the last
    `window` frames) with a fresh cache, then denoises — the naive way to stream."""
    model, cfg = pipe.model, pipe.config
    n = cfg.chunk_frames
    h = w = size // 8
    history = torch.zeros(1, 0, model.config.in_dim, h, w)
    for k in range(chunks):
        watch = Stopwatch()
        visible = history if window == -1 else history[:, max(0, history.shape[1] - (window - n)):]
        state = pipe.start(ctx, size, size, seed=0, max_frames=visible.shape[1] + n)
        state.chunk_index = k
        if visible.shape[1]:
            pipe.prefill(state, visible)
        chunk = pipe.step(state)
        history = torch.cat([history, chunk.latents], 1)
        dt = watch.read().cpu
        yield k, dt, visible.numel() * visible.element_size()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=1000)
    p.add_argument("--recompute-chunks", type=int, default=200, help="the naive modes get slow; cap them")
    p.add_argument("--window", type=int, default=12, help="rolling window in latent frames")
    p.add_argument("--size", type=int, default=32, help="pixels (32 -> 4×4 latent, 4 tokens per frame)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="independent lockstep runs (median, min–max)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CausalWanModel(TINY, attention="sdpa").eval()
    ctx = torch.randn(1, 8, TINY.text_dim)
    probe_at = [c for c in (0, 1, 10, 50, 100, 200, 500, 1000, 2000, 5000) if c < args.chunks] + [args.chunks - 1]
    modes = {
        f"rolling cache (W={args.window})": (StreamConfig(window=args.window), rolling_or_global, args.chunks),
        "global cache (growing)": (StreamConfig(), rolling_or_global, args.chunks),
        f"recompute window (W={args.window}, no cache)": (StreamConfig(), recompute, args.recompute_chunks),
        "recompute all history (no cache)": (StreamConfig(), recompute, args.recompute_chunks),
    }
    names = list(modes)
    results = [lockstep(model, ctx, args, modes) for _ in range(args.repeats)]  # [repeat][mode][chunk]
    print(f"\nPer-chunk process CPU time (ms: median (min–max) over {args.repeats} repeats of the median of the "
          f"5 chunks around the index) and memory held by the stream (KiB); tiny config dim {TINY.dim}, "
          f"{TINY.num_layers} layers, {args.size}×{args.size} px, chunk 3, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| chunk | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for c in probe_at:
        row = []
        for name in names:
            per_repeat = [_near(r[name], c) for r in results]
            if None in per_repeat:
                row.append("—")
                continue
            held = results[0][name].get(c, (0, None))[1]
            row.append(spread(per_repeat, scale=1000) + (f" / {held / 1024:.0f} KiB" if held is not None else ""))
        print(f"| {c} | " + " | ".join(row) + " |")
    roll = [r[names[0]] for r in results]
    print(f"\nrolling cache: last/first per-chunk time ratio = "
          f"{spread([_near(r, args.chunks - 3) / _near(r, 2) for r in roll], '{:.2f}')} (flat ≈ 1)")
    rec = [r[names[3]] for r in results]
    c_end = max(rec[0])
    print(f"recompute all history: chunk {c_end} / chunk 0 time ratio = "
          f"{spread([r[c_end][0] / statistics.median(r[k][0] for k in range(0, 3)) for r in rec])}")


def lockstep(model, ctx, args, modes) -> dict[str, dict[int, tuple[float, int]]]:
    """One run of every mode, one chunk each in turn (order rotated per chunk): {mode: {chunk: (s, bytes)}}."""
    names = list(modes)
    gens = {}
    for name, (cfg, fn, n) in modes.items():
        window = args.window if "W=" in name else -1
        gens[name] = (fn(StreamingPipeline(model, cfg), ctx, args.size, n, window), n)
    out = {name: {} for name in names}
    for k, name in rounds(names, args.chunks):
        gen, n = gens[name]
        if k < n:
            kk, dt, held = next(gen)
            out[name][kk] = (dt, held)
    return out


def _near(series: dict[int, tuple[float, int]], c: int) -> float | None:
    near = [series[k][0] for k in range(c - 2, c + 3) if k in series]
    return statistics.median(near) if near and c in series else None


if __name__ == "__main__":
    main()
