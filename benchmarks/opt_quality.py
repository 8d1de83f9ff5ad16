"""Output cost of the opt-in modes, same seed: fast RoPE and simulated fp8 weights vs the exact path.

Every mode is measured against the exact float32 stream (the reference), next to the exact bf16 stream's own
distance from it (what "bf16 rounding" costs). A mode is harmless when its bf16 distance matches exact bf16's.
The bf16-vs-bf16 distance of two modes is also printed, but it is not an error of either: any 1-ulp
difference in bf16 (fast RoPE changes 0.002 % of rounded elements) grows through the layers, steps and
chunks into a divergence of the same order as bf16 rounding itself (this machine printed 0.0028 for it at
every commit since the script was added; a run reported 0.0000 — a number that depends on where the first
ulp flips, not a RoPE error). Random weights (a trained model's sensitivity may differ); median
(min–max) over --seeds weight seeds. Runs on CPU in well under a minute.

    python benchmarks/opt_quality.py [--seeds 3]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sf_core.config import ModelConfig, StreamConfig  # noqa: E402
from sf_core.speed.fp8 import simulate_fp8_weights_  # noqa: E402
from sf_core.model import CausalWanModel  # noqa: E402
from sf_core.pipeline import StreamingPipeline  # noqa: E402
from sf_core.rope import apply_rope, apply_rope_fast, fast_freqs, grid_freqs  # noqa: E402

CFG = ModelConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=4, text_dim=64, freq_dim=64, text_len=32)


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def stream(weights: dict, dtype, rope="exact", fp8=False, chunks=3) -> torch.Tensor:
    model = CausalWanModel(CFG, attention="sdpa", rope=rope).eval()
    model.load_state_dict(weights)
    model = model.to(dtype)
    if fp8:
        simulate_fp8_weights_(model)
    pipe = StreamingPipeline(model, StreamConfig(), dtype=dtype)
    ctx = torch.randn(1, 8, CFG.text_dim, generator=torch.Generator().manual_seed(1))
    state = pipe.start(ctx, 48, 64, seed=0, max_frames=3 * chunks)
    return torch.cat([pipe.step(state).latents for _ in range(chunks)], 1).float()


def one_seed(seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    weights = CausalWanModel(CFG).to(torch.bfloat16).float().state_dict()  # bf16-representable weights
    ref = stream(weights, torch.float32)
    bf16 = stream(weights, torch.bfloat16)
    fast = stream(weights, torch.bfloat16, rope="fast")
    return {
        "exact bf16 vs exact fp32 (the bf16 rounding scale)": rel(bf16, ref),
        "fast RoPE bf16 vs exact fp32": rel(fast, ref),
        "fp8 weights (simulated, per tensor) bf16 vs exact fp32": rel(stream(weights, torch.bfloat16, fp8=True), ref),
        "fast RoPE fp32 vs exact fp32 (the RoPE error itself)": rel(stream(weights, torch.float32, rope="fast"), ref),
        "fast RoPE bf16 vs exact bf16 (divergence of two bf16 runs, see above)": rel(fast, bf16),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="weight seeds (median, min, max)")
    args = p.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()} · torch {torch.__version__} · "
          f"{torch.get_num_threads()} threads")
    freqs = grid_freqs(3, 30, 52, 128, start_frame=1020)
    x = torch.randn(1, freqs.shape[0], 12, 128, generator=torch.Generator().manual_seed(0))
    exact = apply_rope(x.double(), freqs)
    print("RoPE op, positions up to 1022, 480x832 grid, head_dim 128:")
    print(f"  fp32 fast vs float64: max abs {float((apply_rope_fast(x, fast_freqs(freqs)).double() - exact).abs().max()):.2e}")
    xb = x.bfloat16()
    differ = (apply_rope_fast(xb, fast_freqs(freqs)) != apply_rope(xb, freqs)).float().mean()
    print(f"  bf16 outputs differing from the exact path: {float(differ) * 100:.3f} % of elements")
    rows = [one_seed(s) for s in range(args.seeds)]
    print(f"\nmodel {CFG.dim}-d, {CFG.num_layers} layers, 3 chunks at 48x64 px, relative L2 of the latents, "
          f"median (min–max) over {args.seeds} weight seeds:\n")
    print("| comparison | relative L2 |\n|---|---:|")
    for name in rows[0]:
        v = [r[name] for r in rows]
        print(f"| {name} | {statistics.median(v):.2e} ({min(v):.2e}–{max(v):.2e}) |")


if __name__ == "__main__":
    main()
