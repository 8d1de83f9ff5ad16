"""Real-time streaming benchmark: DiT + streaming decode, end to end, against a naive version of our own pipeline.

Full Wan2.1-T2V-1.3B at 480×832 in bf16 with RANDOM weights (compute cost does not depend on weight
values). Configurations, all in one run on one machine:

  naive        no cache reuse (each chunk re-encodes all earlier frames from scratch), eager, SDPA
  plain        KV cache, eager, default attention, final cache pass kept, sequential decode
  optimised    + chosen attention kernel, --compile / --cuda-graphs, final cache pass skipped, decode overlap
  +taehv       optimised with the TAEHV tiny preview decoder
  frame-wise   optimised with 1-latent-frame chunks
  rolling      optimised, rolling window, --long-chunks chunks (throughput of the second half)

Throughput = pixel frames / wall time from the first noise draw to the last frame on the host (uint8);
first-frame latency = time until chunk 0's frames are on the host; per-chunk DiT and decode times come
from CUDA events (perf_counter on CPU) in the sequential runs. Text encoding is excluded (random context).

    python benchmarks/gpu_stream.py --device cuda --cuda-graphs --json perf.json
    python benchmarks/gpu_stream.py --tiny            # CPU smoke run, seconds
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sf_core.speed.graphs import FastForward  # noqa: E402
from sf_core.config import DTYPES, SHORT_DTYPE_NAMES, WAN_1_3B, ModelConfig, StreamConfig  # noqa: E402
from sf_core.speed.fp8 import simulate_fp8_weights_  # noqa: E402
from sf_core.model import CausalWanModel  # noqa: E402
from sf_core.speed.overlap import decode_overlapped, decode_sequential  # noqa: E402
from sf_core.pipeline import StreamingPipeline  # noqa: E402
from sf_core.vae.taehv import TAEHV, StreamingTAEHVDecoder  # noqa: E402
from sf_core.vae.wan import StreamingDecoder, VAEConfig, WanVAE  # noqa: E402

TINY_DIT = ModelConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, out_dim=16, text_dim=32,
                       freq_dim=32, text_len=16)
FLOOR_TFLOPS = 800.0  # assumed achievable dense bf16 on an H100 (selfforcing.md §8.3)
RANDOM_WEIGHTS_NOTE = "weights are random: the compute cost of every configuration does not depend on weight values"


# -- FLOP model (selfforcing.md §8.2: GEMMs and attention only, 2 FLOPs per MAC) ---------------------------
def dit_pass_flops(cfg: ModelConfig, query_tokens: int, key_tokens: int) -> float:
    d = cfg.dim
    linear = query_tokens * cfg.num_layers * (8 * d * d + 4 * d * d + 4 * d * cfg.ffn_dim)
    cross = 4 * query_tokens * cfg.text_len * d * cfg.num_layers
    self_attn = 4 * query_tokens * key_tokens * d * cfg.num_layers
    return float(linear + cross + self_attn)


def dit_video_flops(cfg: ModelConfig, frame_tokens: int, chunk_frames: int, chunks: int, steps: int = 4,
                    final_cache_pass: bool = True, window: int = -1) -> float:
    """FLOPs of a stream: `steps` denoising passes + 1 cache pass per chunk (optionally none for the last)."""
    total = 4.0 * cfg.text_len * cfg.dim * cfg.dim * cfg.num_layers  # cross-attention K/V, once per video
    q = chunk_frames * frame_tokens
    for k in range(chunks):
        visible = (k + 1) * chunk_frames if window == -1 else min((k + 1) * chunk_frames, window)
        passes = steps + (1 if final_cache_pass or k + 1 < chunks else 0)
        total += passes * dit_pass_flops(cfg, q, visible * frame_tokens)
    return total


# -- timing helpers ------------------------------------------------------------------------------------------
class Clock:
    """Interval timer: CUDA events on a GPU (read after the run), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_host(frames: torch.Tensor) -> torch.Tensor:
    """[-1, 1] frames -> uint8 on the host (what a viewer needs); forces completion of the chunk."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


# -- one run of one configuration --------------------------------------------------------------------------
def run_stream(pipe, decoder_factory, ctx, size, chunks, seed, device, overlap=False, commit_last=True,
               max_frames=None) -> dict:
    """Generate + decode `chunks` chunks; wall clock to host frames, per-chunk DiT/decode event times."""
    decoder = decoder_factory()
    clock = Clock(device)
    sync(device)
    t0 = time.perf_counter()
    state = pipe.start(ctx, *size, seed=seed, max_frames=max_frames or chunks * pipe.config.chunk_frames)
    first, frames, latents, dit_ms, dec_ms = None, 0, [], [], []
    if overlap:
        for chunk, out in decode_overlapped(pipe, state, decoder, chunks, commit_last=commit_last):
            host = to_host(out)
            first = first if first is not None else time.perf_counter() - t0
            frames += host.shape[1]
            latents.append(chunk.latents)
    else:
        marks = []
        for k in range(chunks):
            a = clock.mark()
            chunk = pipe.step(state, commit=commit_last or k + 1 < chunks)
            b = clock.mark()
            out = decoder.decode_chunk(chunk.latents)
            c = clock.mark()
            host = to_host(out)
            first = first if first is not None else time.perf_counter() - t0
            frames += host.shape[1]
            latents.append(chunk.latents)
            marks.append((a, b, c))
        sync(device)
        dit_ms = [clock.ms(a, b) for a, b, _ in marks]
        dec_ms = [clock.ms(b, c) for _, b, c in marks]
    sync(device)
    total = time.perf_counter() - t0
    return {"seconds": total, "frames": frames, "fps": frames / total, "first_frame_s": first,
            "dit_ms": dit_ms, "decode_ms": dec_ms, "latents": torch.cat(latents, 1)}


def run_naive(pipe, decoder_factory, ctx, size, chunks, seed, device) -> dict:
    """No cache reuse: chunk k starts a fresh cache and re-encodes all k·n earlier clean frames first."""
    decoder = decoder_factory()
    sync(device)
    t0 = time.perf_counter()
    history, first, frames = None, None, 0
    for k in range(chunks):
        state = pipe.start(ctx, *size, seed=seed, max_frames=(k + 1) * pipe.config.chunk_frames)
        if history is not None:
            pipe.prefill(state, history)
        state.chunk_index = k
        chunk = pipe.step(state)
        history = chunk.latents if history is None else torch.cat([history, chunk.latents], 1)
        host = to_host(decoder.decode_chunk(chunk.latents))
        first = first if first is not None else time.perf_counter() - t0
        frames += host.shape[1]
    sync(device)
    total = time.perf_counter() - t0
    return {"seconds": total, "frames": frames, "fps": frames / total, "first_frame_s": first,
            "dit_ms": [], "decode_ms": [], "latents": history}


def repeat(fn, runs: int, device, warmup: int = 1) -> dict:
    """`warmup` unmeasured runs (kernel selection, compilation, graph capture), then `runs` measured; medians."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results = [fn() for _ in range(runs)]
    med = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
    per_chunk = lambda key: [statistics.median(col) for col in zip(*(r[key] for r in results))]  # noqa: E731
    return {"fps": med("fps"), "seconds": med("seconds"), "first_frame_s": med("first_frame_s"),
            "frames": results[0]["frames"], "dit_ms": per_chunk("dit_ms"), "decode_ms": per_chunk("decode_ms"),
            "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
            "runs": runs, "latents": results[-1]["latents"]}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tiny", action="store_true", help="small DiT/decoders at 32×48 px: a CPU smoke run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=SHORT_DTYPE_NAMES, help="default bf16 (fp32 with --tiny on CPU)")
    p.add_argument("--chunks", type=int, default=7, help="chunks per video (7 × 3 latents = 81 frames)")
    p.add_argument("--long-chunks", type=int, help="rolling run length (default 40; 4 with --tiny)")
    p.add_argument("--window", type=int, default=12, help="rolling window in latent frames")
    p.add_argument("--sink", type=int, default=3, help="sink frames of the rolling run")
    p.add_argument("--runs", type=int, default=3, help="measured runs per configuration (median)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (compile, graph capture)")
    p.add_argument("--attention", default="auto", help="attention kernel of the optimised runs")
    p.add_argument("--rope", choices=("exact", "fast"), default="exact", help="RoPE of the optimised runs")
    p.add_argument("--compile", action="store_true", help="torch.compile the per-chunk forward")
    p.add_argument("--cuda-graphs", action="store_true", help="replay the per-chunk forward as CUDA graphs")
    p.add_argument("--fp8", action="store_true", help="also measure simulated-fp8 weights vs the same seed")
    p.add_argument("--skip", default="", help="comma list of configurations to skip (e.g. naive,frame-wise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="gpu_stream.json", help="where to write the results")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp32" if args.tiny and device.type == "cpu" else "bf16")]
    cfg = TINY_DIT if args.tiny else WAN_1_3B
    size = (32, 48) if args.tiny else (480, 832)
    long_chunks = args.long_chunks or (4 if args.tiny else 40)
    skip = set(filter(None, args.skip.split(",")))
    print(f"# {RANDOM_WEIGHTS_NOTE}", flush=True)

    torch.manual_seed(args.seed)
    with torch.device(device):
        model = CausalWanModel(cfg, attention="sdpa").to(dtype).eval()
        vae = WanVAE(VAEConfig(dim=8 if args.tiny else 96), with_encoder=False).to(dtype).eval()
        tae = TAEHV(widths=(8, 8, 8, 8) if args.tiny else (256, 128, 64, 64), with_encoder=False).to(dtype).eval()
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
    vae_dec, tae_dec = (lambda: StreamingDecoder(vae)), (lambda: StreamingTAEHVDecoder(tae))

    fast_model = model if (args.attention == "sdpa" and args.rope == "exact") else _variant(model, args.attention, args.rope)
    fast = FastForward(fast_model, compile=args.compile, cuda_graphs=args.cuda_graphs)
    chunked = StreamConfig()
    n = args.chunks
    runs = {}

    def opt(config, decoder, chunks=n, max_frames=None):
        pipe = StreamingPipeline(fast, config, device=device, dtype=dtype)
        return lambda: run_stream(pipe, decoder, ctx, size, chunks, args.seed, device, overlap=False,
                                  commit_last=False, max_frames=max_frames)

    plain_pipe = StreamingPipeline(model, chunked, device=device, dtype=dtype)
    configs = {
        "naive": lambda: run_naive(plain_pipe, vae_dec, ctx, size, n, args.seed, device),
        "plain": lambda: run_stream(plain_pipe, vae_dec, ctx, size, n, args.seed, device),
        "optimised (sequential)": opt(chunked, vae_dec),
        "optimised": lambda: run_stream(StreamingPipeline(fast, chunked, device=device, dtype=dtype), vae_dec, ctx,
                                        size, n, args.seed, device, overlap=True, commit_last=False),
        "optimised +taehv": lambda: run_stream(StreamingPipeline(fast, chunked, device=device, dtype=dtype), tae_dec,
                                               ctx, size, n, args.seed, device, overlap=True, commit_last=False),
        "frame-wise": opt(StreamConfig(chunk_frames=1), vae_dec, chunks=n * 3),
        "rolling": opt(StreamConfig(window=args.window, sink=args.sink), vae_dec, chunks=long_chunks),
    }
    for name, fn in configs.items():
        if name in skip:
            continue
        t0 = time.perf_counter()
        runs[name] = repeat(fn, args.runs, device, args.warmup)
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", flush=True)

    ft = model.frame_tokens(size[0] // 8, size[1] // 8)
    flops = {"dit_81": dit_video_flops(cfg, ft, 3, n),
             "dit_81_no_final_cache_pass": dit_video_flops(cfg, ft, 3, n, final_cache_pass=False)}
    floor_s = flops["dit_81"] / (FLOOR_TFLOPS * 1e12)
    checks = {}
    if "plain" in runs:
        ref = runs["plain"]["latents"]
        for name in ("naive", "optimised", "optimised +taehv"):
            if name in runs:
                checks[f"{name} vs plain (relative L2 of latents)"] = rel_err(runs[name]["latents"], ref)
        if "naive" in runs:
            checks["cache-pass saving, DiT ms of last chunk (plain − optimised sequential)"] = (
                runs["plain"]["dit_ms"][-1] - runs["optimised (sequential)"]["dit_ms"][-1]
                if "optimised (sequential)" in runs else None)
    if args.fp8:
        q = copy.deepcopy(model)
        simulate_fp8_weights_(q)
        a = run_stream(StreamingPipeline(model, chunked, device=device, dtype=dtype), vae_dec, ctx, size, n,
                       args.seed, device)["latents"]
        b = run_stream(StreamingPipeline(q, chunked, device=device, dtype=dtype), vae_dec, ctx, size, n,
                       args.seed, device)["latents"]
        checks["fp8 (simulated weights) vs unquantised, relative L2 of latents, random weights"] = rel_err(b, a)
        del q

    report = {"note": RANDOM_WEIGHTS_NOTE, "environment": environment(device), "tiny": args.tiny,
              "dtype": str(dtype), "size": size, "model": json.loads(cfg.to_json()),
              "options": {k: getattr(args, k) for k in ("attention", "rope", "compile", "cuda_graphs", "window", "sink",
                                                        "chunks", "runs", "warmup")},
              "flops": flops, "floor_s_at_800_tflops": floor_s, "checks": checks,
              "results": {k: {kk: vv for kk, vv in v.items() if kk != "latents"} for k, v in runs.items()}}
    print_table(report)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    return report


def _variant(model: CausalWanModel, attention: str, rope: str) -> CausalWanModel:
    """The same weights (shared storage) under another attention kernel / RoPE mode."""
    with torch.device("meta"):
        twin = CausalWanModel(model.config, attention=attention, rope=rope)
    twin.load_state_dict(model.state_dict(), assign=True)
    return twin.eval()


def print_table(report: dict) -> None:
    env = report["environment"]
    print(f"\n{env.get('gpu', 'CPU')} · torch {env['torch']} · {report['dtype']} · {report['size'][0]}×{report['size'][1]}"
          f" · {report['note']}")
    print(f"DiT FLOPs per 81 frames: {report['flops']['dit_81'] / 1e12:.1f} T "
          f"({report['flops']['dit_81_no_final_cache_pass'] / 1e12:.1f} T without the final cache pass); "
          f"floor at {FLOOR_TFLOPS:.0f} TFLOP/s: {report['floor_s_at_800_tflops']:.3f} s\n")
    print("| configuration | frames | FPS | first frame s | DiT ms/chunk (first…last) | decode ms/chunk | peak GiB | "
          "DiT TFLOP/s |")
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for name, r in report["results"].items():
        dit = f"{r['dit_ms'][0]:.1f}…{r['dit_ms'][-1]:.1f}" if r["dit_ms"] else "—"
        dec = f"{statistics.median(r['decode_ms']):.1f}" if r["decode_ms"] else "—"
        mem = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "—"
        util = (f"{report['flops']['dit_81_no_final_cache_pass'] / (sum(r['dit_ms']) / 1000) / 1e12:.1f}"
                if r["dit_ms"] and name == "optimised (sequential)" else "—")
        print(f"| {name} | {r['frames']} | {r['fps']:.2f} | {r['first_frame_s']:.3f} | {dit} | {dec} | {mem} | {util} |")
    for k, v in report["checks"].items():
        print(f"- {k}: {v if v is None else f'{v:.3g}'}")


if __name__ == "__main__":
    main()
