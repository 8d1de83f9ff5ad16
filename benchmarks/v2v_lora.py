"""Per-chunk cost of video-to-video (encode + denoise) and of LoRAs, relative to plain text-to-video.

Two tables:

1. FLOPs at Wan2.1-1.3B, 832×480, chunk 3 (meta device, nothing allocated): the DiT's passes per chunk
   (4 steps + the cache pass for T2V; fewer for V2V), the streaming encoder (Wan VAE / TAEHV, counted by
   `FlopCounterMode` on the real modules) and an unmerged LoRA's extra matmuls; its encoder cache size.
2. Measured here: same-run ratios of the mean per-chunk time, every variant advanced one chunk in turn
   (interleaved repeats, so machine noise hits all alike), on a small random-weight model (CPU by default).

    python benchmarks/v2v_lora.py                  # both tables, CPU
    python benchmarks/v2v_lora.py --device cuda --dim 1536 --layers 30 --size 832x480   # on a GPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_stream import dit_pass_flops  # noqa: E402
from repeats import ratios, spread  # noqa: E402
from sf_core.config import WAN_1_3B, ModelConfig, StreamConfig  # noqa: E402
from sf_core.lora import UnmergedLoRA, merge, restore  # noqa: E402
from sf_core.model import CausalWanModel  # noqa: E402
from sf_core.pipeline import StreamingPipeline  # noqa: E402
from sf_core.testing.tiny import randomize  # noqa: E402
from sf_core.v2v import VideoToVideo, first_step  # noqa: E402
from sf_core.vae.encoders import StreamingTAEHVEncoder, WanChunkEncoder  # noqa: E402
from sf_core.vae.taehv import TAEHV  # noqa: E402
from sf_core.vae.wan import VAEConfig, WanVAE  # noqa: E402
from sf_core.weights.lora import LoRALayer  # noqa: E402

LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def random_lora(model: torch.nn.Module, rank: int, seed: int = 0) -> dict[str, LoRALayer]:
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.startswith("blocks.") and name.split(".", 2)[2] in LORA_TARGETS:
            layers[name] = LoRALayer(torch.randn(rank, m.in_features, generator=g) * 0.01,
                                     torch.randn(m.out_features, rank, generator=g) * 0.01, 1.0)
    return layers


def lora_flops_per_token(cfg: ModelConfig, rank: int) -> tuple[float, float]:
    """(base linear FLOPs, unmerged LoRA extra FLOPs) per query token and pass, all layers (cross K/V on text
    are computed once per prompt and left out of both)."""
    d, f = cfg.dim, cfg.ffn_dim
    base = 12 * d * d + 4 * d * f
    extra = 6 * 2 * rank * (2 * d) + 2 * 2 * rank * (d + f)   # q,k,v,o + cross q,o ; ffn.0 + ffn.2
    return base * cfg.num_layers, extra * cfg.num_layers


def encoder_flops(make_encoder, frames: int, height: int, width: int) -> tuple[float, float, int]:
    """(first chunk FLOPs, later chunk FLOPs, cache bytes in bf16) of a streaming encoder, on the meta device."""
    encoder = make_encoder()
    counts = []
    for n in (frames - 3, frames):  # 9, then 12 frames
        with FlopCounterMode(display=False) as fc:
            encoder.encode_chunk(torch.empty(1, n, 3, height, width, device="meta"))
        counts.append(fc.get_total_flops())
    state = getattr(encoder, "cache", None) or getattr(encoder, "memory", {})
    return counts[0], counts[1], sum(v.numel() for v in state.values()) * 2


def flops_table(height: int, width: int, rank: int) -> None:
    cfg, n = WAN_1_3B, 3
    frame_tokens = (height // 16) * (width // 16)
    q = n * frame_tokens
    keys = 7 * q  # chunk 6 of the official 21-frame clip: the global cache holds 18 frames + the chunk
    with torch.device("meta"):
        dit = CausalWanModel(cfg)
    pipe = StreamingPipeline(dit, StreamConfig())   # meta weights: only its step schedule is used
    per_pass = dit_pass_flops(cfg, q, keys)
    t2v = 5 * per_pass
    with torch.device("meta"):
        wan = WanVAE(VAEConfig())
        tae = TAEHV()
    wan_first, wan_later, wan_cache = encoder_flops(lambda: WanChunkEncoder(wan), 12, height, width)
    tae_first, tae_later, tae_cache = encoder_flops(lambda: StreamingTAEHVEncoder(tae), 12, height, width)
    base_lin, extra = lora_flops_per_token(cfg, rank)
    print(f"\nFLOPs per chunk, Wan2.1-1.3B, {width}×{height}, chunk 3 ({q} query tokens), at chunk 6 of a global "
          f"cache ({keys} key tokens); T2V = 4 steps + cache pass = {t2v / 1e12:.1f} TFLOP\n")
    print("| variant | DiT passes | DiT TFLOP | encoder TFLOP (later chunk) | total / T2V |")
    print("|---|---:|---:|---:|---:|")
    print(f"| T2V | 5 | {t2v / 1e12:.1f} | 0 | 1.00 |")
    for strength in (1.0, 0.9, 0.7, 0.0):
        passes = len(pipe.timesteps) - first_step(pipe, strength) + 1
        for name, enc in (("Wan VAE", wan_later), ("TAEHV", tae_later)):
            e = 0 if strength == 1.0 else enc
            print(f"| V2V strength {strength} + {name} encoder | {passes} | {passes * per_pass / 1e12:.1f} | "
                  f"{e / 1e12:.2f} | {(passes * per_pass + e) / t2v:.2f} |")
    lora = 5 * q * extra
    print(f"| T2V + unmerged LoRA rank {rank} (all 10 block linears) | 5 | {(t2v + lora) / 1e12:.1f} | 0 | "
          f"{(t2v + lora) / t2v:.3f} |")
    print(f"| T2V + merged LoRA | 5 | {t2v / 1e12:.1f} | 0 | 1.000 |")
    print(f"\nEncoder first chunk (9 frames): Wan VAE {wan_first / 1e12:.2f} TFLOP, TAEHV {tae_first / 1e12:.3f} TFLOP. "
          f"Causal state kept between chunks (bf16): Wan VAE encoder {wan_cache / 2 ** 20:.0f} MiB, "
          f"TAEHV {tae_cache / 2 ** 20:.1f} MiB. Unmerged LoRA: +{extra / base_lin * 100:.2f}% of the block "
          f"linears' FLOPs; its factors hold {sum((cfg.dim + (cfg.ffn_dim if t.startswith('ffn') else cfg.dim)) * rank for t in LORA_TARGETS) * cfg.num_layers * 2 / 2 ** 20:.0f} MiB (bf16).")


def measured_table(args) -> None:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = ModelConfig(dim=args.dim, ffn_dim=4 * args.dim, num_heads=max(1, args.dim // 128), num_layers=args.layers,
                      in_dim=16, out_dim=16, text_dim=64, freq_dim=64, text_len=16)
    width, height = (int(v) for v in args.size.split("x"))
    model = randomize(CausalWanModel(cfg, attention="sdpa"), seed=0, scale=0.02).to(device, dtype).eval()
    vae_cfg = VAEConfig() if args.full_vae else VAEConfig(dim=16)
    vae = WanVAE(vae_cfg).to(device, dtype).eval().requires_grad_(False)
    ctx = torch.randn(1, 16, cfg.text_dim, device=device, dtype=dtype)
    lora = random_lora(model, args.rank)
    chunks = args.chunks
    counts = (9, 12)
    video = torch.rand(1, counts[0] + counts[1] * (chunks - 1), 3, height, width, device=device) * 2 - 1

    def t2v():
        pipe = StreamingPipeline(model, StreamConfig(), device, dtype)
        state = pipe.start(ctx, height, width, seed=0, max_frames=3 * chunks)
        return lambda k: pipe.step(state)

    encode_times = {}

    def v2v(strength):
        def make():
            pipe = StreamingPipeline(model, StreamConfig(), device, dtype)
            state = pipe.start(ctx, height, width, seed=0, max_frames=3 * chunks)
            run = VideoToVideo(pipe, state, TimedEncoder(WanChunkEncoder(vae), encode_times.setdefault(strength, []),
                                                         device), strength)
            cuts = [0, counts[0]] + [counts[0] + counts[1] * i for i in range(1, chunks)]
            return lambda k: run.push(video[:, cuts[k]:cuts[k + 1]])
        return make

    def with_lora(apply, undo):
        """T2V steps with the LoRA applied around each one (hooks / merge are set-up costs, not timed)."""
        def make():
            step = t2v()
            def go(k):
                handle = apply()
                try:
                    t0 = clock(device)
                    step(k)
                    return clock(device) - t0
                finally:
                    undo(handle)   # the other variants must not see it
            return go
        return make

    unmerged = with_lora(lambda: UnmergedLoRA(model, [lora], [0.8]), lambda hooks: hooks.remove())
    merged = with_lora(lambda: merge(model, [(lora, 0.8)]), lambda backup: restore(model, backup))

    variants = {"T2V": t2v, "V2V strength 1.0": v2v(1.0), "V2V strength 0.9": v2v(0.9),
                "V2V strength 0.7": v2v(0.7), "V2V strength 0.0": v2v(0.0),
                f"T2V + unmerged LoRA r{args.rank}": unmerged, f"T2V + merged LoRA r{args.rank}": merged}
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeats):
        steps = {name: make() for name, make in variants.items()}
        for k in range(chunks):
            turn = (r * chunks + k) % len(names)
            for name in names[turn:] + names[:turn]:   # a rotated order every chunk
                t0 = clock(device)
                inner = steps[name](k)
                times[name].append(inner if isinstance(inner, float) else clock(device) - t0)
    print(f"\nMeasured per-chunk time ({device.type}, {dtype}, dim {cfg.dim}, {cfg.num_layers} layers, {width}×{height}, "
          f"VAE dim {vae_cfg.dim}, {chunks} chunks × {args.repeats} interleaved repeats, rotated order, "
          f"{'process CPU' if device.type == 'cpu' else 'wall'} time, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)); medians (min–max), ratios per chunk then median\n")
    base = times["T2V"]
    print("| variant | ms / chunk | ratio to T2V | of which encode ms | denoise only / T2V |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        strength = float(name.split()[-1]) if name.startswith("V2V") else None
        enc = encode_times.get(strength) or [0.0] * len(ts)
        denoise = [t - e for t, e in zip(ts, enc)]
        print(f"| {name} | {spread(ts, scale=1000)} | {statistics.median(ratios(ts, base)):.2f} | "
              f"{statistics.median(enc) * 1000:.1f} | {statistics.median(ratios(denoise, base)):.2f} |")
    base_lin, extra = lora_flops_per_token(cfg, args.rank)
    print(f"\nThis config's unmerged-LoRA share of the block linears' FLOPs: +{extra / base_lin * 100:.1f}% "
          f"(rank {args.rank} on dim {cfg.dim}; at 1.3B: see the FLOP table)")


class TimedEncoder:
    """A ChunkEncoder that records how long each encode takes."""

    def __init__(self, encoder, times: list, device):
        self.encoder, self.times, self.device = encoder, times, device
        self.spatial_stride, self.temporal_stride = encoder.spatial_stride, encoder.temporal_stride

    def encode_chunk(self, frames):
        t0 = clock(self.device)
        out = self.encoder.encode_chunk(frames)
        self.times.append(clock(self.device) - t0)
        return out

    def reset(self):
        self.encoder.reset()


def clock(device: torch.device) -> float:
    """Process CPU time on a CPU (other processes on shared cores do not inflate it); synced wall time on CUDA."""
    if device.type != "cuda":
        return time.process_time()
    torch.cuda.synchronize(device)
    return time.perf_counter()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--size", default="128x128", help="WIDTHxHEIGHT pixels of the measured run")
    p.add_argument("--full-vae", action="store_true", help="the real Wan VAE width (dim 96) in the measured run")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-flops", action="store_true")
    p.add_argument("--skip-measured", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.skip_flops:
        flops_table(480, 832, args.rank)
    if not args.skip_measured:
        with torch.no_grad():
            measured_table(args)


if __name__ == "__main__":
    main()
