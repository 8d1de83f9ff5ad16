"""Real-time streaming benchmark: DiT + streaming decode, end to end, at the speed levels users get.

Full Wan2.1-T2V-1.3B at 480×832 in bf16 with RANDOM weights (compute cost does not depend on weight
values). Every row does the same work — the same chunks, 4 denoising passes per chunk, every chunk's
cache-update pass except the last one's (no row runs the final cache pass; its cost is measured on its own
by `pipeline.commit` after the timed run and reported as a check). Configurations, all in one run:

  naive            no cache reuse (each chunk re-encodes all earlier frames from scratch), eager, SDPA
  plain            KV cache, eager, the model's attention, sequential decode (`--speed off`)
  LEVEL (seq)      `sf_core.speed.settings` at LEVEL (safe, max; what `--speed LEVEL` gives a user),
                   sequential decode: per-chunk DiT and decode times
  LEVEL            the same with the level's decode overlap (when it has one)
  LEVEL +taehv     with the TAEHV tiny decoder
  frame-wise       the last level, 1-latent-frame chunks
  rolling          the last level, rolling window, --long-chunks chunks

Throughput = pixel frames / wall time from the first noise draw to the last frame on the host (uint8);
first-frame latency = time until chunk 0's frames are on the host; per-chunk DiT and decode times come
from CUDA events (perf_counter on CPU). Host syncs per steady-state chunk are counted with
`torch.cuda.set_sync_debug_mode` (CUDA only). Text encoding is excluded (random context). Results are
written to --json after every configuration, so a run cut short keeps what it measured; --max-seconds
skips the configurations that would start after that budget.

    python benchmarks/gpu_stream.py --device cuda --json perf.json          # the prepared GPU command
    python benchmarks/gpu_stream.py --tiny            # CPU smoke run, seconds
"""
from __future__ import annotations

import argparse
import warnings
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sf_core.attention import BACKENDS  # noqa: E402
from sf_core.config import DTYPES, SHORT_DTYPE_NAMES, WAN_1_3B, ModelConfig, StreamConfig  # noqa: E402
from sf_core.speed.fp8 import simulate_fp8_weights_  # noqa: E402
from sf_core.model import ROPE_MODES, CausalWanModel  # noqa: E402
from sf_core.speed.overlap import decode_stream  # noqa: E402
from sf_core.speed.settings import LEVELS, accelerate, resolve_speed  # noqa: E402
from sf_core.pipeline import StreamingPipeline  # noqa: E402
from sf_core.vae.taehv import TAEHV, StreamingTAEHVDecoder  # noqa: E402
from sf_core.vae.wan import StreamingDecoder, VAEConfig, WanVAE  # noqa: E402

TINY_DIT = ModelConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, out_dim=16, text_dim=32,
                       freq_dim=32, text_len=16)
FLOOR_TFLOPS = 800.0  # assumed achievable dense bf16 on an H100 (selfforcing.md §8.3)
TARGETS = {"taehv_fps": 45, "vae_fps": 34, "first_frame_s": 0.25}
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
def run_stream(pipe, decoder_factory, ctx, size, chunks, seed, device, overlap=False, max_frames=None) -> dict:
    """Generate + decode `chunks` chunks (the last one not committed); wall clock to host frames, per-chunk
    DiT/decode event times (sequential runs), then — untimed by the wall clock — the skipped final cache
    pass, run with `pipe.commit` and timed on its own."""
    decoder = decoder_factory()
    clock = Clock(device)
    sync(device)
    t0 = time.perf_counter()
    state = pipe.start(ctx, *size, seed=seed, max_frames=max_frames or chunks * pipe.config.chunk_frames)
    first, frames, latents, marks = None, 0, [], []
    if overlap:
        for chunk, out in decode_stream(pipe.stream(state, chunks, commit_last=False), decoder, device, True):
            host = to_host(out)
            first = first if first is not None else time.perf_counter() - t0
            frames += host.shape[1]
            latents.append(chunk.latents)
    else:
        for k in range(chunks):
            a = clock.mark()
            chunk = pipe.step(state, commit=k + 1 < chunks)
            b = clock.mark()
            out = decoder.decode_chunk(chunk.latents)
            c = clock.mark()
            host = to_host(out)
            first = first if first is not None else time.perf_counter() - t0
            frames += host.shape[1]
            latents.append(chunk.latents)
            marks.append((a, b, c))
    sync(device)
    total = time.perf_counter() - t0
    a = clock.mark()
    pipe.commit(state, chunk)
    b = clock.mark()
    sync(device)
    return {"seconds": total, "frames": frames, "fps": frames / total, "first_frame_s": first,
            "dit_ms": [clock.ms(a, b) for a, b, _ in marks], "decode_ms": [clock.ms(b, c) for _, b, c in marks],
            "final_cache_pass_ms": clock.ms(a, b), "latents": torch.cat(latents, 1)}


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
        chunk = pipe.step(state, commit=False)  # the next chunk re-encodes it anyway
        history = chunk.latents if history is None else torch.cat([history, chunk.latents], 1)
        host = to_host(decoder.decode_chunk(chunk.latents))
        first = first if first is not None else time.perf_counter() - t0
        frames += host.shape[1]
    sync(device)
    total = time.perf_counter() - t0
    return {"seconds": total, "frames": frames, "fps": frames / total, "first_frame_s": first,
            "dit_ms": [], "decode_ms": [], "final_cache_pass_ms": None, "latents": history}


def host_syncs_per_chunk(pipe, ctx, size, seed, device) -> int | None:
    """Synchronising CUDA calls during one steady-state chunk (after 2 warm chunks); None off CUDA."""
    if device.type != "cuda":
        return None
    state = pipe.start(ctx, *size, seed=seed, max_frames=3 * pipe.config.chunk_frames)
    pipe.step(state)
    pipe.step(state)
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            pipe.step(state)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


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
            "final_cache_pass_ms": (statistics.median(r["final_cache_pass_ms"] for r in results)
                                    if results[0]["final_cache_pass_ms"] is not None else None),
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
    p.add_argument("--speeds", default="safe,max", help="comma list of speed levels for the optimised rows")
    p.add_argument("--attention", choices=BACKENDS, help="override the levels' attention kernel")
    p.add_argument("--rope", choices=ROPE_MODES, help="override the levels' RoPE mode")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="override the levels")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None, help="override the levels")
    p.add_argument("--fp8", action="store_true", help="also measure simulated-fp8 weights vs the same seed")
    p.add_argument("--skip", default="", help="comma list of configurations to skip (e.g. naive,frame-wise)")
    p.add_argument("--max-seconds", type=float, help="skip configurations that would start after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="gpu_stream.json", help="where to write the results (after every row)")
    args = p.parse_args(argv)

    began = time.perf_counter()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp32" if args.tiny and device.type == "cpu" else "bf16")]
    cfg = TINY_DIT if args.tiny else WAN_1_3B
    size = (32, 48) if args.tiny else (480, 832)
    long_chunks = args.long_chunks or (4 if args.tiny else 40)
    skip = set(filter(None, args.skip.split(",")))
    levels = [lv for lv in args.speeds.split(",") if lv]
    if not levels or set(levels) - set(LEVELS):
        p.error(f"--speeds {args.speeds!r}: a comma list of {', '.join(LEVELS)}")
    print(f"# {RANDOM_WEIGHTS_NOTE}", flush=True)

    torch.manual_seed(args.seed)
    with torch.device(device):
        model = CausalWanModel(cfg, attention="sdpa").to(dtype).eval()
        vae = WanVAE(VAEConfig(dim=8 if args.tiny else 96), with_encoder=False).to(dtype).eval()
        tae = TAEHV(widths=(8, 8, 8, 8) if args.tiny else (256, 128, 64, 64), with_encoder=False).to(dtype).eval()
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
    vae_dec, tae_dec = (lambda: StreamingDecoder(vae)), (lambda: StreamingTAEHVDecoder(tae))
    overrides = {"attention": args.attention, "rope": args.rope, "compile": args.compile,
                 "cuda_graphs": args.cuda_graphs}
    speeds = {lv: resolve_speed(lv, device, dtype, overrides) for lv in levels}
    for lv, sp in speeds.items():
        print(f"# speed {sp.describe()}", flush=True)
    n, chunked = args.chunks, StreamConfig()

    twins = {lv: _twin(model) for lv in levels}  # a level may change its model in place (attention, fp8)

    def pipe_at(level: str | None, config=chunked):
        forward = model if level is None else accelerate(twins[level], speeds[level])
        return StreamingPipeline(forward, config, device=device, dtype=dtype)

    def row(pipe, decoder, overlap=False, chunks=n, max_frames=None):
        return lambda: run_stream(pipe, decoder, ctx, size, chunks, args.seed, device, overlap, max_frames)

    plain = pipe_at(None)
    configs = {"naive": lambda: run_naive(plain, vae_dec, ctx, size, n, args.seed, device),
               "plain": row(plain, vae_dec)}
    for lv, sp in speeds.items():
        configs[f"{lv} (seq)"] = row(pipe_at(lv), vae_dec)
        if sp.overlap_decode:
            configs[lv] = row(pipe_at(lv), vae_dec, overlap=True)
        configs[f"{lv} +taehv"] = row(pipe_at(lv), tae_dec, overlap=sp.overlap_decode)
    last = levels[-1]
    configs["frame-wise"] = row(pipe_at(last, StreamConfig(chunk_frames=1)), vae_dec, chunks=n * 3)
    configs["rolling"] = row(pipe_at(last, StreamConfig(window=args.window, sink=args.sink)), vae_dec,
                             chunks=long_chunks)

    ft = model.frame_tokens(size[0] // 8, size[1] // 8)
    flops = {"dit_81": dit_video_flops(cfg, ft, 3, n),
             "dit_81_no_final_cache_pass": dit_video_flops(cfg, ft, 3, n, final_cache_pass=False)}
    report = {"note": RANDOM_WEIGHTS_NOTE, "environment": environment(device), "tiny": args.tiny,
              "dtype": str(dtype), "size": size, "model": json.loads(cfg.to_json()),
              "options": {k: getattr(args, k) for k in ("speeds", "attention", "rope", "compile", "cuda_graphs",
                                                        "window", "sink", "chunks", "runs", "warmup")},
              "speeds": {lv: sp.describe() for lv, sp in speeds.items()},
              "flops": flops, "floor_s_at_800_tflops": flops["dit_81"] / (FLOOR_TFLOPS * 1e12),
              "checks": {}, "results": {}, "skipped": []}
    runs = {}
    over = lambda: args.max_seconds is not None and time.perf_counter() - began > args.max_seconds  # noqa: E731
    for name, fn in configs.items():
        if name in skip:
            continue
        if over():
            report["skipped"].append(name)
            continue
        t0 = time.perf_counter()
        runs[name] = repeat(fn, args.runs, device, args.warmup)
        report["results"][name] = {k: v for k, v in runs[name].items() if k != "latents"}
        report["checks"] = checks(runs, flops)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    for name, pipe in [("plain", plain)] + [(lv, pipe_at(lv)) for lv in levels]:
        if over():
            report["skipped"].append(f"host syncs {name}")
            continue
        report["checks"][f"host syncs in a steady-state chunk, {name}"] = host_syncs_per_chunk(
            pipe, ctx, size, args.seed, device)
    if args.fp8 and over():
        report["skipped"].append("fp8 check")
    elif args.fp8:
        q = _twin(model, share=False)
        simulate_fp8_weights_(q)
        a = run_stream(plain, vae_dec, ctx, size, n, args.seed, device)["latents"]
        b = run_stream(StreamingPipeline(q, chunked, device=device, dtype=dtype), vae_dec, ctx, size, n,
                       args.seed, device)["latents"]
        report["checks"]["fp8 (simulated weights) vs unquantised, relative L2 of latents, random weights"] = rel_err(b, a)
        del q
    print_table(report)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    return report


def _twin(model: CausalWanModel, share: bool = True) -> CausalWanModel:
    """The same model in new modules: sharing the weight storage, or with copies of it."""
    with torch.device("meta"):
        twin = CausalWanModel(model.config, attention=model.attention_backend, rope=model.rope)
    sd = model.state_dict() if share else {k: v.clone() for k, v in model.state_dict().items()}
    twin.load_state_dict(sd, assign=True)
    return twin.eval()


def checks(runs: dict, flops: dict) -> dict:
    """Same seed, same work: every row's latents against plain; the final cache pass each row skipped."""
    out, other_work = {}, ("plain", "frame-wise", "rolling")
    if "plain" in runs:
        ref = runs["plain"]["latents"]
        for name, r in runs.items():
            if name not in other_work:
                out[f"{name} vs plain (relative L2 of latents)"] = rel_err(r["latents"], ref)
    for name, r in runs.items():
        if r["final_cache_pass_ms"] is not None and name not in other_work[1:]:
            out[f"final cache pass skipped by every row, DiT ms, {name}"] = r["final_cache_pass_ms"]
    return out


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
                if r["dit_ms"] and (name == "plain" or name.endswith("(seq)")) else "—")
        print(f"| {name} | {r['frames']} | {r['fps']:.2f} | {r['first_frame_s']:.3f} | {dit} | {dec} | {mem} | {util} |")
    for k, v in report["checks"].items():
        print(f"- {k}: {v if v is None else f'{v:.3g}'}")
    if report["skipped"]:
        print(f"- skipped (past --max-seconds): {', '.join(report['skipped'])}")
    print(f"- targets (issue 14, 1.3B, 832×480, H100/H200): ≥ {TARGETS['taehv_fps']} FPS with TAEHV, "
          f"≥ {TARGETS['vae_fps']} FPS with the Wan VAE, first frame ≤ {TARGETS['first_frame_s']} s")


if __name__ == "__main__":
    main()
