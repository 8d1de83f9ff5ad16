"""Per-chunk streaming decode time and peak memory: full Wan2.1 VAE vs the TAEHV tiny decoder.

Random weights (speed does not depend on them). Default: tiny sizes for a CPU smoke run.
`--full --device cuda` benchmarks the real architectures at 480×832 (chunks of 3 latents).

    python -m benchmarks.vae_stream
    python -m benchmarks.vae_stream --full --device cuda --dtype bf16
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from sf_core.config import DTYPES, SHORT_DTYPE_NAMES
from sf_core.vae.taehv import TAEHV, StreamingTAEHVDecoder
from sf_core.vae.wan import StreamingDecoder, VAEConfig, WanVAE



def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(decoder, chunks: list[torch.Tensor], device: torch.device) -> dict:
    """Decode all chunks once; time the later (steady-state) ones; peak memory (CUDA: of this run; CPU: process
    max RSS so far, which only grows)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, frames = [], []
    for chunk in chunks:
        _sync(device)
        start = time.perf_counter()
        out = decoder.decode_chunk(chunk)
        _sync(device)
        times.append(time.perf_counter() - start)
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

    # warm-up pass (kernel selection, allocator), then the measured pass
    for make in (lambda: StreamingDecoder(vae), lambda: StreamingTAEHVDecoder(tae)):
        bench(make(), chunks[:2], device)
    rows = {"TAEHV (memory)": bench(StreamingTAEHVDecoder(tae), chunks, device),
            "TAEHV (overlap)": bench(StreamingTAEHVDecoder(tae, "overlap"), chunks, device),
            "Wan2.1 VAE (cached)": bench(StreamingDecoder(vae), chunks, device)}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# streaming decode, {name}, {args.dtype}, {h}x{w}, {args.chunk_frames} latents/chunk, "
          f"VAE dim {vae_dim}, TAEHV widths {widths}, {args.chunks} chunks")
    mem = "peak CUDA alloc" if device.type == "cuda" else "process max RSS so far"
    print(f"| decoder | first chunk s | median later chunk s | frames/chunk | fps (later) | vs VAE | {mem} MiB |")
    print("|---|---|---|---|---|---|---|")
    base = rows["Wan2.1 VAE (cached)"]["median"]
    for label, r in rows.items():
        fps = r["frames"][-1] / r["median"]
        print(f"| {label} | {r['first']:.4f} | {r['median']:.4f} | {r['frames'][0]}, {r['frames'][1]}… | "
              f"{fps:.1f} | {base / r['median']:.1f}× | {r['peak'] / 2**20:.0f} |")


if __name__ == "__main__":
    main()
