"""Per-chunk cost vs stream length: rolling KV cache vs growing global cache vs recomputing without a cache.

CPU, tiny config by default. Prints a table of per-chunk time (median over a few chunks around each
probe point) and memory held by the stream (KV cache or recomputed context) at increasing chunk indices.
Ratios are what matter on a noisy machine; absolute times only mean something on a quiet GPU.

    python benchmarks/rolling_cache.py --chunks 1000
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sf_core.cache import KVCache  # noqa: E402
from sf_core.config import ModelConfig, StreamConfig  # noqa: E402
from sf_core.model import CausalWanModel  # noqa: E402
from sf_core.pipeline import StreamingPipeline  # noqa: E402

TINY = ModelConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=2, in_dim=4, out_dim=4, text_dim=32,
                   freq_dim=32, text_len=16)


def rolling_or_global(pipe, ctx, size, chunks, window):
    """Chunk-wise generation with the pipeline; yields (chunk, seconds, KV bytes held) per chunk."""
    state = pipe.start(ctx, size, size, seed=0, max_frames=chunks * pipe.config.chunk_frames)
    for k in range(chunks):
        t0 = time.perf_counter()
        pipe.step(state)
        dt = time.perf_counter() - t0
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
        t0 = time.perf_counter()
        visible = history if window == -1 else history[:, max(0, history.shape[1] - (window - n)):]
        state = pipe.start(ctx, size, size, seed=0, max_frames=visible.shape[1] + n)
        state.chunk_index = k
        if visible.shape[1]:
            pipe.prefill(state, visible)
        chunk = pipe.step(state)
        history = torch.cat([history, chunk.latents], 1)
        dt = time.perf_counter() - t0
        yield k, dt, visible.numel() * visible.element_size()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=1000)
    p.add_argument("--recompute-chunks", type=int, default=200, help="the naive modes get slow; cap them")
    p.add_argument("--window", type=int, default=12, help="rolling window in latent frames")
    p.add_argument("--size", type=int, default=32, help="pixels (32 -> 4×4 latent, 4 tokens per frame)")
    p.add_argument("--threads", type=int, default=1)
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
    # All modes advance in lockstep, one chunk each in turn, so machine noise hits them alike.
    runs = {}
    for name, (cfg, fn, n) in modes.items():
        window = args.window if "W=" in name else -1
        runs[name] = (fn(StreamingPipeline(model, cfg), ctx, args.size, n, window), n)
    results = {name: {} for name in modes}
    for k in range(args.chunks):
        for name, (gen, n) in runs.items():
            if k < n:
                for kk, dt, held in gen:
                    results[name][kk] = (dt, held)
                    break
    print(f"\nPer-chunk time (ms, median of 5 chunks around the index) and memory held by the stream (KiB); "
          f"tiny config dim {TINY.dim}, {TINY.num_layers} layers, {args.size}×{args.size} px, chunk 3, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    names = list(results)
    print("| chunk | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    base = None
    for c in probe_at:
        row = []
        for name in names:
            s = results[name]
            near = [s[k][0] for k in range(c - 2, c + 3) if k in s]
            if not near:
                row.append("—")
                continue
            ms = statistics.median(near) * 1000
            row.append(f"{ms:.1f} ms / {s[c][1] / 1024:.0f} KiB" if c in s else f"{ms:.1f} ms")
        print(f"| {c} | " + " | ".join(row) + " |")
    roll = results[names[0]]
    first = statistics.median(roll[k][0] for k in range(0, 5) if k in roll)
    last = statistics.median(roll[k][0] for k in range(args.chunks - 5, args.chunks) if k in roll)
    print(f"\nrolling cache: last/first per-chunk time ratio = {last / first:.2f} (flat ≈ 1)")
    rec = results[names[3]]
    c_end = max(rec)
    print(f"recompute all history: chunk {c_end} / chunk 0 time ratio = "
          f"{rec[c_end][0] / statistics.median(rec[k][0] for k in range(0, 3)):.1f}")


if __name__ == "__main__":
    main()
