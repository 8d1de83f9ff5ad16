"""Output cost of the opt-in modes, same seed: fast RoPE and simulated fp8 weights vs the exact bf16 path.

Scale reference: the bf16-vs-fp32 gap of the exact path (what "bf16 rounding" means here). Random weights
(no checkpoint needed; a trained model's sensitivity may differ). Runs on CPU in about a minute.

    python benchmarks/opt_quality.py
"""
from __future__ import annotations

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


def stream(model, dtype, chunks=3):
    pipe = StreamingPipeline(model.to(dtype), StreamConfig(), dtype=dtype)
    ctx = torch.randn(1, 8, CFG.text_dim, generator=torch.Generator().manual_seed(1))
    state = pipe.start(ctx, 48, 64, seed=0, max_frames=3 * chunks)
    return torch.cat([pipe.step(state).latents for _ in range(chunks)], 1).float()


def main() -> None:
    torch.manual_seed(0)
    freqs = grid_freqs(3, 30, 52, 128, start_frame=1020)
    x = torch.randn(1, freqs.shape[0], 12, 128)
    exact = apply_rope(x.double(), freqs)
    print("RoPE op, positions up to 1022, 480x832 grid, head_dim 128:")
    print(f"  fp32 fast vs float64: max abs {float((apply_rope_fast(x, fast_freqs(freqs)).double() - exact).abs().max()):.2e}")
    xb = x.bfloat16()
    differ = (apply_rope_fast(xb, fast_freqs(freqs)) != apply_rope(xb, freqs)).float().mean()
    print(f"  bf16 outputs differing from the exact path: {float(differ) * 100:.3f} % of elements")

    base = CausalWanModel(CFG, attention="sdpa").eval()
    ref32 = stream(base, torch.float32)
    ref = stream(base, torch.bfloat16)
    print(f"model {CFG.dim}-d, {CFG.num_layers} layers, 3 chunks at 48x64 px, relative L2 of latents:")
    print(f"  exact bf16 vs exact fp32 (bf16 rounding scale): {rel(ref, ref32):.4f}")
    fast = CausalWanModel(CFG, attention="sdpa", rope="fast").eval()
    fast.load_state_dict(base.float().state_dict())
    print(f"  fast RoPE bf16 vs exact bf16: {rel(stream(fast, torch.bfloat16), ref):.4f}")
    q = CausalWanModel(CFG, attention="sdpa").eval()
    q.load_state_dict(base.float().state_dict())
    q = q.to(torch.bfloat16)
    simulate_fp8_weights_(q)
    print(f"  fp8 weights (simulated, per tensor) bf16 vs exact bf16: {rel(stream(q, torch.bfloat16), ref):.4f}")


if __name__ == "__main__":
    main()
