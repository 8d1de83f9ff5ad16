"""Per-chunk streaming decode time and peak memory: full Wan2.1 VAE vs the TAEHV tiny decoder.

Random weights (speed does not depend on them). Default: tiny sizes for a CPU smoke run.
`--full --device cuda` benchmarks the real architectures at 480×832 (chunks of 3 latents).
The decoders run in interleaved repeats (one stream each per round, order rotated); rows are medians
(min–max) over the repeats, times are process CPU time on a CPU (wall time after a sync on CUDA), and the
"vs VAE" ratio is taken per round.

    python -m benchmarks.vae_stream
    python -m benchmarks.vae_stream --full --device cuda --dtype bf16
"""
from __future__ import annotations

import argparse
import resource
import statistics

import torch

from benchmarks.repeats import Stopwatch, ratios, rounds, spread

from sf_core.config import DTYPES, SHORT_DTYPE_NAMES
from sf_core.vae.taehv import TAEHV, StreamingTAEHVDecoder
from sf_core.vae.wan import StreamingDecoder, VAEConfig, WanVAE



def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(decoder, chunks: list[torch.Tensor], device: torch.device) -> dict:
    """Decode all chunks once: seconds per chunk (CPU time on a CPU, wall after a sync on CUDA), frames per
    chunk, peak memory (CUDA: of this run; CPU: process max RSS so far, which only grows)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, frames = [], []
    for chunk in chunks:
        _sync(device)
        watch = Stopwatch()
        out = decoder.decode_chunk(chunk)
        _sync(device)
        sample = watch.read()
        times.append(sample.wall if device.type == "cuda" else sample.cpu)
        frames.append(out.shape[1])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steady = times[1:] or times
    return {"first": times[0], "median": statistics.median(steady), "frames": frames, "peak": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="real sizes: VAE dim 96, TAEHV widths 256/128/64/64, 480x832")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=SHORT_DTYPE_NAMES, default="fp32")
    ap.add_argument("--height", type=int, help="pixels (default 480 with --full, else 64)")
    ap.add_argument("--width", type=int, help="pixels (default 832 with --full, else 96)")
    ap.add_argument("--chunks", type=int, default=5, help="chunks decoded per decoder (first is warm-up)")
    ap.add_argument("--chunk-frames", type=int, default=3, help="latent frames per chunk")
    ap.add_argument("--vae-dim", type=int, help="VAE base width (default 96 with --full, else 16)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median, min–max)")
    args = ap.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    h = args.height or (480 if args.full else 64)
    w = args.width or (832 if args.full else 96)
    vae_dim = args.vae_dim or (96 if args.full else 16)
    widths = (256, 128, 64, 64) if args.full else (64, 32, 16, 16)
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig(dim=vae_dim), with_encoder=False).to(device, dtype).eval()
    tae = TAEHV(widths=widths, with_encoder=False).to(device, dtype).eval()
    chunks = [torch.randn(1, args.chunk_frames, 16, h // 8, w // 8, device=device, dtype=dtype)
              for _ in range(args.chunks)]

    makers = {"TAEHV (memory)": lambda: StreamingTAEHVDecoder(tae),
              "TAEHV (overlap)": lambda: StreamingTAEHVDecoder(tae, "overlap"),
              "Wan2.1 VAE (cached)": lambda: StreamingDecoder(vae)}
    for make in makers.values():  # warm-up (kernel selection, allocator)
        bench(make(), chunks[:2], device)
    runs = {label: [] for label in makers}
    for _, label in rounds(list(makers), args.repeats):
        runs[label].append(bench(makers[label](), chunks, device))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# streaming decode, {name}, {args.dtype}, {h}x{w}, {args.chunk_frames} latents/chunk, "
          f"VAE dim {vae_dim}, TAEHV widths {widths}, {args.chunks} chunks")
    mem = "peak CUDA alloc" if device.type == "cuda" else "process max RSS so far"
    clock = "wall s after sync" if device.type == "cuda" else "CPU s"
    print(f"median (min–max) over {args.repeats} interleaved rounds; times in {clock}\n")
    print(f"| decoder | first chunk s | median later chunk s | frames/chunk | fps (later) | vs VAE | {mem} MiB |")
    print("|---|---|---|---|---|---|---|")
    base = [r["median"] for r in runs["Wan2.1 VAE (cached)"]]
    for label, rs in runs.items():
        later = [r["median"] for r in rs]
        frames = rs[0]["frames"]
        print(f"| {label} | {spread((r['first'] for r in rs), '{:.4f}')} | {spread(later, '{:.4f}')} | "
              f"{frames[0]}, {frames[1]}… | {spread(frames[-1] / t for t in later)} | "
              f"{spread(ratios(base, later))}× | {max(r['peak'] for r in rs) / 2**20:.0f} |")


if __name__ == "__main__":
    main()
