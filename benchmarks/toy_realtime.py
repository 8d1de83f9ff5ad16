"""Is the embedded default model faster than real time on a CPU? Streams it (DiT + toy autoencoder decode,
rolling cache) and prints per-chunk wall time, produced frames per second and the real-time factor
(produced fps / the model's playback fps; > 1 = faster than real time), plus the process's resident memory
after the first and the last chunk (nothing may grow with the stream's length).

    OMP_NUM_THREADS=2 python benchmarks/toy_realtime.py --threads 2 --chunks 80

Wall time, not CPU time: real time is what a viewer sees. The first chunk (warm-up) is reported apart.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sf_core.generate.bundle import load_bundle  # noqa: E402
from sf_core.generate.files import default_model  # noqa: E402
from sf_core.pipeline import StreamingPipeline  # noqa: E402


def resident_mib() -> float:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=80)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = default_model()
    bundle = load_bundle(files, "cpu", torch.float32, torch.float32)
    fps, w, h = files.defaults["fps"], files.defaults["width"], files.defaults["height"]
    pipe = StreamingPipeline(bundle.model, bundle.stream_config, spatial_stride=bundle.decoder.spatial_stride)
    state = pipe.start(bundle.encode([files.defaults["prompt"]]), h, w, seed=0, max_frames=21)
    decoder = bundle.decoder.clone()
    times, frames, held = [], [], []
    for _ in range(args.chunks):
        t0 = time.perf_counter()
        chunk = pipe.step(state)
        out = decoder.decode_chunk(chunk.latents)
        times.append(time.perf_counter() - t0)
        frames.append(out.shape[1])
        held.append(resident_mib())
    steady = times[1:]
    produced = sum(frames[1:]) / sum(steady)
    print(f"embedded default: {w}×{h} px at {fps:g} fps, chunk {bundle.stream_config.chunk_frames} latent frames, "
          f"window {bundle.stream_config.window}; {args.threads} threads, torch {torch.__version__}")
    print("| chunks | first chunk (s) | per chunk p50 (s) | p95 (s) | frames/s produced | real-time factor | resident MiB after chunk 1 → last |")
    print("|---|---|---|---|---|---|---|")
    p95 = sorted(steady)[int(0.95 * (len(steady) - 1))]
    print(f"| {args.chunks} | {times[0]:.3f} | {statistics.median(steady):.3f} | {p95:.3f} | {produced:.1f} | "
          f"{produced / fps:.1f}× | {held[0]:.0f} → {held[-1]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
