"""Real-size smoke run on the CPU: the Wan2.1-1.3B DiT with random bf16 weights streams one chunk, and the real
umT5-XXL and Wan VAE exist on the meta device with their exact parameter counts (selfforcing.md, formats.md)."""
from __future__ import annotations

import pytest
import torch

from sf_core.config import WAN_1_3B, StreamConfig
from sf_core.model import CausalWanModel
from sf_core.pipeline import StreamingPipeline
from sf_core.text.umt5 import UMT5_XXL, UMT5Encoder
from sf_core.vae.wan import WanVAE


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_umt5_xxl_and_wan_vae_have_their_released_sizes():
    with torch.device("meta"):
        umt5, vae = UMT5Encoder(UMT5_XXL), WanVAE()
    c = UMT5_XXL
    per_block = 4 * c.dim * c.num_heads * c.head_dim + 3 * c.dim * c.ffn_dim + 2 * c.dim + c.num_buckets * c.num_heads
    assert _count(umt5) == c.vocab_size * c.dim + c.num_layers * per_block + c.dim == 5_680_910_336
    assert len(vae.state_dict()) == 194 and round(_count(vae) / 1e5) == 1269  # Wan2.1_VAE.pth: 126.9 M


@pytest.mark.slow
def test_wan_1_3b_streams_a_chunk_in_bf16():
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = CausalWanModel(WAN_1_3B, attention="sdpa").eval()
    finally:
        torch.set_default_dtype(before)
    assert _count(model) == 1_418_996_800 and model.dtype == torch.bfloat16
    # two steps (not four) and a window of one chunk keep it short; the shapes are the real ones
    pipe = StreamingPipeline(model, StreamConfig(denoising_steps=(1000.0, 500.0), window=3), dtype=torch.bfloat16)
    context = torch.randn(1, 512, 4096, dtype=torch.bfloat16)
    state = pipe.start(context, 128, 128, seed=0)  # 16×16 latent: 64 tokens a frame, 192 a chunk
    assert state.cache.k.shape == (30, 1, 3 * 64, 12, 128) and state.cache.k.dtype == torch.bfloat16
    chunks = [pipe.step(state) for _ in range(2)]  # the second chunk evicts: the rolling path runs too
    assert all(c.latents.shape == (1, 3, 16, 16, 16) and c.latents.dtype == torch.bfloat16 for c in chunks)
    assert all(bool(torch.isfinite(c.latents).all()) for c in chunks)
    assert state.cache.global_end == 6 * 64 and state.cache.local_end == 3 * 64
