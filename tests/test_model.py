import math

import pytest
import torch

from sf_core.config import WAN_1_3B, ModelConfig
from sf_core.model import CausalWanModel, sinusoidal_embedding
from sf_core.cache import KVCache

from sf_core.testing.tiny import TINY_DIT, randomize


def test_real_1_3b_config_on_meta_device():
    with torch.device("meta"):
        model = CausalWanModel(WAN_1_3B)
    sd = model.state_dict()
    assert len(sd) == 825
    assert sum(v.numel() for v in sd.values()) == 1_418_996_800
    top = {k for k in sd if not k.startswith("blocks.")}
    assert top == {"patch_embedding.weight", "patch_embedding.bias", "text_embedding.0.weight",
                   "text_embedding.0.bias", "text_embedding.2.weight", "text_embedding.2.bias",
                   "time_embedding.0.weight", "time_embedding.0.bias", "time_embedding.2.weight",
                   "time_embedding.2.bias", "time_projection.1.weight", "time_projection.1.bias",
                   "head.head.weight", "head.head.bias", "head.modulation"}
    assert sd["blocks.29.ffn.0.weight"].shape == (8960, 1536)
    assert sd["blocks.0.modulation"].shape == (1, 6, 1536)
    assert sd["head.modulation"].shape == (1, 2, 1536)
    assert sd["head.head.weight"].shape == (64, 1536)
    assert sd["patch_embedding.weight"].shape == (1536, 16, 1, 2, 2)
    assert len([k for k in sd if k.startswith("blocks.0.")]) == 27


def test_sinusoid_is_cos_then_sin_in_float64():
    t = torch.tensor([0.0, 937.5, 1000.0])
    emb = sinusoidal_embedding(8, t)
    assert emb.dtype == torch.float64
    for i, tv in enumerate(t.tolist()):
        for k in range(4):
            w = 10000 ** (-k / 4)
            assert emb[i, k].item() == pytest.approx(math.cos(tv * w), abs=1e-12)
            assert emb[i, 4 + k].item() == pytest.approx(math.sin(tv * w), abs=1e-12)


def _patchify_reference(x, pt, ph, pw):
    """Token (f, h, w) holds values ordered (p, q, r, c), c fastest — written independently of the model."""
    b, f, c, hh, ww = x.shape
    h, w = hh // ph, ww // pw
    out = torch.empty(b, f * h * w, pt * ph * pw * c)
    for fi in range(f):
        for hi in range(h):
            for wi in range(w):
                vals = []
                for q in range(ph):
                    for r in range(pw):
                        for ci in range(c):
                            vals.append(x[:, fi, ci, hi * ph + q, wi * pw + r])
                out[:, (fi * h + hi) * w + wi] = torch.stack(vals, -1)
    return out, (f, h, w)


def test_unpatchify_order(tiny_model):
    x = torch.randn(1, 2, TINY_DIT.out_dim, 4, 6)
    tokens, grid = _patchify_reference(x, 1, 2, 2)
    assert torch.equal(tiny_model.unpatchify(tokens, grid), x)


def test_text_zero_padded_without_mask(tiny_model):
    x = torch.randn(1, 3, 4, 4, 4)
    t = torch.full((1, 3), 500.0)
    ctx = torch.randn(1, 5, TINY_DIT.text_dim)
    padded = torch.cat([ctx, torch.zeros(1, TINY_DIT.text_len - 5, TINY_DIT.text_dim)], 1)
    longer = torch.cat([padded, torch.randn(1, 4, TINY_DIT.text_dim)], 1)  # truncated back to text_len
    with torch.no_grad():
        a, b, c = (tiny_model(x, t, cx) for cx in (ctx, padded, longer))
    assert torch.equal(a, b) and torch.equal(a, c)
    # padding rows are not masked: they carry the bias-derived embedding and change the output
    with torch.no_grad():
        d = tiny_model(x, t, torch.cat([ctx, torch.zeros(1, 2, TINY_DIT.text_dim)], 1)[:, :5])
    assert torch.equal(a, d)


def test_per_frame_timesteps_modulate_each_frame(tiny_model):
    x = torch.randn(1, 3, 4, 4, 4)
    ctx = torch.randn(1, 4, TINY_DIT.text_dim)
    t1 = torch.tensor([[1000.0, 500.0, 0.0]])
    with torch.no_grad():
        a = tiny_model(x, t1, ctx)
        b = tiny_model(x, torch.tensor([[1000.0, 500.0, 250.0]]), ctx)
        c = tiny_model(x, torch.tensor([500.0]), ctx)
        d = tiny_model(x, torch.full((1, 3), 500.0), ctx)
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)  # [B] timesteps broadcast to [B, F]


def _chunked(model, x, t, ctx, chunk, window=-1):
    f = x.shape[1]
    ft = model.frame_tokens(x.shape[-2], x.shape[-1])
    cache = KVCache.allocate(model.config, x.shape[0], ft, f, window=window)
    outs = [model(x[:, i:i + chunk], t[:, i:i + chunk], ctx, cache, i) for i in range(0, f, chunk)]
    return torch.cat(outs, 1)


@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_chunks_equal_block_causal_parallel(tiny_model, chunk):
    torch.manual_seed(1)
    x = torch.randn(2, 6, 4, 4, 6)
    t = torch.rand(2, 6) * 1000
    ctx = torch.randn(2, 7, TINY_DIT.text_dim)
    with torch.no_grad():
        cached = _chunked(tiny_model, x, t, ctx, chunk)
        parallel = tiny_model.forward_parallel(x, t, ctx, chunk_frames=chunk, use_flex=False)
    assert (cached - parallel).abs().max() < 1e-5


def test_rolling_cache_equals_windowed_parallel(tiny_model):
    torch.manual_seed(2)
    x = torch.randn(1, 12, 4, 4, 4)
    t = torch.rand(1, 12) * 1000
    ctx = torch.randn(1, 3, TINY_DIT.text_dim)
    with torch.no_grad():
        cached = _chunked(tiny_model, x, t, ctx, 3, window=6)
        parallel = tiny_model.forward_parallel(x, t, ctx, chunk_frames=3, window=6, use_flex=False)
        unwindowed = tiny_model.forward_parallel(x, t, ctx, chunk_frames=3, use_flex=False)
    assert (cached - parallel).abs().max() < 1e-5
    assert (cached - unwindowed).abs().max() > 1e-3  # the window really hides old frames


def test_cached_with_clean_context_equals_teacher_forcing(tiny_model):
    """Chunk k denoised with the cache filled by clean passes (t=0) == the teacher-forcing forward."""
    torch.manual_seed(3)
    clean = torch.randn(1, 6, 4, 4, 4)
    noisy = torch.randn(1, 6, 4, 4, 4)
    t = torch.rand(1, 6) * 1000
    ctx = torch.randn(1, 5, TINY_DIT.text_dim)
    cache = KVCache.allocate(TINY_DIT, 1, 4, 6)
    outs = []
    with torch.no_grad():
        for i in range(0, 6, 3):
            outs.append(tiny_model(noisy[:, i:i + 3], t[:, i:i + 3], ctx, cache, i))
            tiny_model(clean[:, i:i + 3], torch.zeros(1, 3), ctx, cache, i)  # cache-update pass
        tf = tiny_model.forward_parallel(noisy, t, ctx, chunk_frames=3, clean_x=clean, use_flex=False)
    assert (torch.cat(outs, 1) - tf).abs().max() < 1e-5


def test_gradients_flow_through_cached_forward_without_touching_context(tiny_model):
    model = randomize(CausalWanModel(TINY_DIT, attention="sdpa"))
    cache = KVCache.allocate(TINY_DIT, 1, 4, 6)
    ctx = torch.randn(1, 4, TINY_DIT.text_dim)
    with torch.no_grad():
        model(torch.randn(1, 3, 4, 4, 4), torch.zeros(1, 3), ctx, cache, 0)
    k_before = cache.k.clone()
    out = model(torch.randn(1, 3, 4, 4, 4), torch.full((1, 3), 500.0), ctx, cache, 3)
    out.square().mean().backward()
    assert model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
    assert model.blocks[0].cross_attn.k.weight.grad.abs().sum() > 0  # cross K/V recomputed under autograd
    assert torch.equal(cache.k[:, :, :12], k_before[:, :, :12])  # earlier chunk's K untouched
    assert not cache.k.requires_grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_modes_track_float32(tiny_model, dtype):
    x = torch.randn(1, 3, 4, 4, 4)
    t = torch.full((1, 3), 750.0)
    ctx = torch.randn(1, 4, TINY_DIT.text_dim)
    with torch.no_grad():
        ref = tiny_model(x, t, ctx)
        low = CausalWanModel(TINY_DIT, attention="sdpa")
        low.load_state_dict(tiny_model.state_dict())
        out = low.to(dtype)(x.to(dtype), t, ctx.to(dtype))
    assert out.dtype == dtype
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_cache_for_other_resolution_is_rejected(tiny_model):
    cache = KVCache.allocate(TINY_DIT, 1, 4, 6)
    with pytest.raises(ValueError, match="tokens per frame"):
        tiny_model(torch.randn(1, 3, 4, 6, 6), torch.zeros(1, 3), torch.randn(1, 2, 32), cache, 0)


def test_heads_follow_config():
    cfg = ModelConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=1, text_dim=8, freq_dim=16)
    with torch.device("meta"):
        m = CausalWanModel(cfg)
    assert m.blocks[0].self_attn.head_dim == 128
