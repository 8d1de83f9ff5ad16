"""Correctness of the performance paths: attention kernel choice, in-place cache writes, the compiled /
graph-captured forward, the cross-attention cache, skipping the last cache pass, overlapped decoding,
fast RoPE and fp8 weights."""
import pytest
import torch

from sf_core.speed.graphs import FastForward
from sf_core.attention import attention, resolve_backend
from sf_core.cache import KVCache
from sf_core.config import StreamConfig
from sf_core.speed.fp8 import Fp8Linear, block_linears, fp8_quantize, simulate_fp8_weights_, to_fp8_linears_
from sf_core.model import CausalWanModel
from sf_core.speed.overlap import decode_overlapped, decode_sequential, decode_stream
from sf_core.pipeline import Chunk, PromptSwitch, StreamingPipeline
from sf_core.rope import apply_rope, fast_freqs, apply_rope_fast, grid_freqs
from sf_core.vae.taehv import TAEHV, StreamingTAEHVDecoder

from sf_core.testing.tiny import TINY_DIT, randomize

def _ctx():
    return torch.randn(1, 5, TINY_DIT.text_dim, generator=torch.Generator().manual_seed(5))


def _stream(model, chunks=3, cfg=StreamConfig(window=6, sink=1), commit_last=True):
    pipe = StreamingPipeline(model, cfg)
    state = pipe.start(_ctx(), 32, 32, seed=1, max_frames=9)
    return [pipe.step(state, commit=commit_last or k + 1 < chunks).latents for k in range(chunks)], state


# -- (a) attention kernel selection ---------------------------------------------------------------------------
@pytest.mark.parametrize("dev,dtype,flash,expected", [
    ("cpu", torch.float32, True, "sdpa"), ("cpu", torch.bfloat16, True, "sdpa"),
    ("cuda", torch.float32, True, "sdpa"), ("cuda", torch.bfloat16, True, "flash"),
    ("cuda", torch.float16, True, "flash"), ("cuda", torch.bfloat16, False, "sdpa")])
def test_auto_picks_flash_only_for_half_precision_cuda_with_the_package(dev, dtype, flash, expected):
    assert resolve_backend("auto", dev, dtype, has_flash=flash) == expected


def test_explicit_kernels_are_checked_against_device_and_dtype():
    assert resolve_backend("cudnn", "cuda", torch.bfloat16, has_cudnn=True) == "cudnn"
    assert resolve_backend("efficient", "cuda", torch.float32) == "efficient"
    assert resolve_backend("sdpa", "cpu", torch.float32) == "sdpa"
    with pytest.raises(ValueError, match="cuDNN"):
        resolve_backend("cudnn", "cuda", torch.float32, has_cudnn=True)
    with pytest.raises(ValueError, match="cuDNN"):
        resolve_backend("cudnn", "cuda", torch.bfloat16, has_cudnn=False)
    with pytest.raises(ValueError, match="flash-attn"):
        resolve_backend("flash", "cuda", torch.bfloat16, has_flash=False)
    with pytest.raises(ValueError, match="CUDA kernel"):
        resolve_backend("efficient", "cpu", torch.float32)
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("xformers", "cpu", torch.float32)


def test_sdpa_matches_float32_math_reference():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 16, generator=g) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "sdpa"), attention(q, k, v, "math"), atol=1e-5, rtol=1e-5)


# -- (b) cache writes are in place ------------------------------------------------------------------------------
def test_cache_update_returns_views_of_the_preallocated_buffers():
    cache = KVCache.allocate(TINY_DIT, 1, 4, 6)
    ptr_k, ptr_v = cache.k.data_ptr(), cache.v.data_ptr()
    kv = torch.randn(1, 12, TINY_DIT.num_heads, TINY_DIT.head_dim)
    with torch.no_grad():
        cache.begin(0, 12)
        k, v = cache.update(1, kv, kv * 2)
        cache.end()
    assert k.untyped_storage().data_ptr() == ptr_k and v.untyped_storage().data_ptr() == ptr_v
    assert torch.equal(cache.k[1, :, :12], kv) and torch.equal(cache.v[1, :, :12], kv * 2)


def test_stream_with_eviction_never_reallocates_the_cache(tiny_model):
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=6, sink=1))
    state = pipe.start(_ctx(), 32, 32, seed=1)
    ptrs = (state.cache.k.data_ptr(), state.cache.v.data_ptr(), state.cache.cross_k.data_ptr())
    seen = []
    original = state.cache.update

    def spy(layer, k, v):
        out = original(layer, k, v)
        seen.append(out[0].untyped_storage().data_ptr())
        return out
    state.cache.update = spy
    for _ in range(4):  # chunks 2 and 3 evict
        pipe.step(state)
    assert state.cache.global_end // 4 == 12 and state.cache.local_end // 4 == 6
    assert (state.cache.k.data_ptr(), state.cache.v.data_ptr(), state.cache.cross_k.data_ptr()) == ptrs
    assert len(seen) == 4 * 5 * TINY_DIT.num_layers and set(seen) == {ptrs[0]}


# -- (c) static-shape forward: eager wrapper, torch.compile, CUDA graphs -----------------------------------------
def test_fast_forward_without_compile_is_bitwise_the_model(tiny_model):
    plain, _ = _stream(tiny_model)
    fast, _ = _stream(FastForward(tiny_model))
    assert all(torch.equal(a, b) for a, b in zip(plain, fast))


@pytest.mark.slow
def test_compiled_forward_matches_eager_on_cpu():
    """torch.compile (inductor, C++ codegen) of forward_planned; one cache plan so it compiles once."""
    torch.manual_seed(0)
    model = randomize(CausalWanModel(TINY_DIT, attention="sdpa", rope="fast")).eval()
    x, t = torch.randn(1, 3, 4, 4, 4), torch.full((1, 3), 500.0)
    outs = []
    for fn in (model, FastForward(model, compile=True)):
        cache = KVCache.allocate(TINY_DIT, 1, 4, 6)
        with torch.no_grad():
            model(x, t, _ctx(), cache, 0)              # eager first pass fills the cross-attention cache
            outs.append((fn(x * 0.5, t * 0, _ctx(), cache, 0), cache.k.clone()))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_matches_eager():
    torch.manual_seed(0)
    model = randomize(CausalWanModel(TINY_DIT, attention="sdpa")).eval().cuda()
    plain, _ = _stream(model)
    fast_model = FastForward(model, cuda_graphs=True)
    graphed, _ = _stream(fast_model)
    assert fast_model.graphs_captured > 0
    for a, b in zip(plain, graphed):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


# -- (d) cross-attention cache ---------------------------------------------------------------------------------
def _count_calls(modules):
    counts = {id(m): 0 for m in modules}

    def hook(mod, args, out):
        counts[id(mod)] += 1
    handles = [m.register_forward_hook(hook) for m in modules]
    return counts, handles


def test_ready_cross_cache_skips_text_embedding_and_context_projections(tiny_model):
    watched = [tiny_model.text_embedding] + [m for b in tiny_model.blocks for m in (b.cross_attn.k, b.cross_attn.v)]
    counts, handles = _count_calls(watched)
    pipe = StreamingPipeline(tiny_model, StreamConfig())
    state = pipe.start(_ctx(), 32, 32, seed=1, max_frames=9)
    pipe.step(state)
    after_first = dict(counts)
    pipe.step(state)
    for h in handles:
        h.remove()
    assert set(after_first.values()) == {1}, "computed exactly once, on the first of 10 forwards"
    assert counts == after_first, "the second chunk reuses the cached K/V"
    q_calls = []
    h = tiny_model.blocks[0].cross_attn.q.register_forward_hook(lambda *a: q_calls.append(1))
    pipe.switch_prompt(state, _ctx() * 2)
    pipe.step(state)
    h.remove()
    assert len(q_calls) == 5
    assert torch.equal(state.cache.cross_k[0], tiny_model.blocks[0].cross_attn.context_kv(
        tiny_model.embed_text(_ctx() * 2))[0]), "a prompt switch recomputes the cache"


# -- (e) skipping the last cache pass ----------------------------------------------------------------------------
def test_uncommitted_last_chunk_saves_one_forward_and_keeps_the_output(tiny_model):
    calls = []
    h = tiny_model.register_forward_hook(lambda *a: calls.append(1))
    full, _ = _stream(tiny_model, chunks=2)
    n_full = len(calls)
    calls.clear()
    short, state = _stream(tiny_model, chunks=2, commit_last=False)
    h.remove()
    assert (n_full, len(calls)) == (10, 9)
    assert all(torch.equal(a, b) for a, b in zip(full, short))
    assert state.info["final"]


def test_commit_after_an_uncommitted_last_chunk_equals_committing_it(tiny_model):
    pipe = StreamingPipeline(tiny_model, StreamConfig())
    a = pipe.start(_ctx(), 32, 32, seed=1, max_frames=9)
    b = pipe.start(_ctx(), 32, 32, seed=1, max_frames=9)
    pipe.step(a)
    pipe.step(b)
    pipe.step(a)
    last = pipe.step(b, commit=False)
    with pytest.raises(RuntimeError, match="last chunk"):
        pipe.commit(b, Chunk(0, 0, last.latents))
    pipe.commit(b, last)
    assert "final" not in b.info
    assert torch.equal(a.cache.k, b.cache.k) and torch.equal(a.cache.v, b.cache.v)
    assert torch.equal(pipe.step(a).latents, pipe.step(b).latents)


# -- (f) overlapped decoding ------------------------------------------------------------------------------------
def _decoder():
    torch.manual_seed(1)
    return StreamingTAEHVDecoder(randomize(TAEHV(latent_channels=4, widths=(8, 8, 8, 8), with_encoder=False), 2, 0.3))


@pytest.mark.parametrize("commit_last", [True, False])
def test_overlapped_decode_equals_sequential(tiny_model, commit_last):
    results = []
    for run in (decode_sequential, decode_overlapped):
        pipe = StreamingPipeline(tiny_model, StreamConfig())
        state = pipe.start(_ctx(), 32, 32, seed=1, max_frames=9)
        results.append([(c.latents, f) for c, f in run(pipe, state, _decoder(), 3, commit_last=commit_last)])
    assert len(results[1]) == 3 and [f.shape[1] for _, f in results[1]] == [9, 12, 12]
    for (la, fa), (lb, fb) in zip(*results):
        assert torch.equal(la, lb) and torch.equal(fa, fb)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_stop_request_yields_every_chunk_already_made(tiny_model, overlap):
    """What the CLI's graceful stop relies on: after stop() turns true no chunk is started, and the state
    has advanced by exactly the chunks yielded (prompt switches included), so --save-state is consistent."""
    pipe = StreamingPipeline(tiny_model, StreamConfig())
    state = pipe.start(_ctx(), 32, 32, seed=1, max_frames=30)
    ref = pipe.start(_ctx(), 32, 32, seed=1, max_frames=30)
    switches = {1: PromptSwitch(_ctx() * 2, recache=True)}
    yielded = []
    for chunk, frames in decode_stream(pipe.stream(state, None, switches), _decoder(), "cpu", overlap,
                                       stop=lambda: len(yielded) >= 2):
        yielded.append(chunk)
    assert len(yielded) == state.chunk_index and 2 <= len(yielded) <= 4
    expected = [c.latents for c in pipe.stream(ref, len(yielded), switches)]
    assert all(torch.equal(a.latents, b) for a, b in zip(yielded, expected))


def test_overlapped_decode_propagates_errors_and_stops_early(tiny_model):
    pipe = StreamingPipeline(tiny_model, StreamConfig())
    state = pipe.start(_ctx(), 32, 32, seed=1, max_frames=3)  # room for one chunk only
    with pytest.raises(Exception, match="cache full"):
        list(decode_overlapped(pipe, state, _decoder(), 3))
    state = pipe.start(_ctx(), 32, 32, seed=1, max_frames=30)
    gen = decode_overlapped(pipe, state, _decoder(), 10)
    next(gen)
    gen.close()  # must not hang; the producer stops within one chunk
    assert state.chunk_index <= 3


# -- (g) fast RoPE ---------------------------------------------------------------------------------------------
def test_fast_rope_error_is_far_below_bf16_resolution():
    g = torch.Generator().manual_seed(0)
    freqs = grid_freqs(3, 30, 52, 128, start_frame=1020)  # the highest positions of the official table
    x = torch.randn(1, freqs.shape[0], 2, 128, generator=g)
    exact = apply_rope(x.double(), freqs)
    fast = apply_rope_fast(x, fast_freqs(freqs))
    assert (fast.double() - exact).abs().max() < 2e-5  # bf16 spacing near 1 is 7.8e-3
    xb = x.bfloat16()
    mismatch = (apply_rope_fast(xb, fast_freqs(freqs)) != apply_rope(xb, freqs)).float().mean()
    assert mismatch < 0.01, "in bf16 the two paths round to the same value almost everywhere"


def test_fast_rope_model_is_close_to_exact_and_off_by_default(tiny_model):
    assert tiny_model.rope == "exact"
    fast = CausalWanModel(TINY_DIT, attention="sdpa", rope="fast").eval()
    fast.load_state_dict(tiny_model.state_dict())
    a, _ = _stream(tiny_model)
    b, _ = _stream(fast)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="rope"):
        CausalWanModel(TINY_DIT, rope="fp16")


# -- (h) fp8 weights ------------------------------------------------------------------------------------------
def test_fp8_quantize_is_per_tensor_e4m3():
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    q, scale = fp8_quantize(w)
    assert q.dtype == torch.float8_e4m3fn and scale.numel() == 1
    assert q.float().abs().max() == 448
    err = (q.float() * scale - w).abs()
    assert (err <= w.abs() / 16 + scale * 2 ** -9).all()  # 3 mantissa bits; subnormal floor


def test_simulated_fp8_touches_only_block_linears(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    n = simulate_fp8_weights_(tiny_model)
    assert n == TINY_DIT.num_layers * 10  # self q k v o, cross q k v o, ffn 0 and 2
    changed = {k for k, v in tiny_model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"blocks.{i}.{m}.weight" for i in range(TINY_DIT.num_layers) for m in
                       ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
                        "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")}


def test_fp8_linear_matches_its_dequantised_arithmetic():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(3, 5, 64, generator=g)
    try:
        y = Fp8Linear.from_linear(lin)(x)
    except RuntimeError as e:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch._scaled_mm unavailable on CPU here: {e}")
    wq, ws = fp8_quantize(lin.weight)
    xq, xs = fp8_quantize(x.reshape(-1, 64))
    ref = (xq.float() * xs) @ (wq.float() * ws).t() + lin.bias
    torch.testing.assert_close(y, ref.view(3, 5, 32), atol=1e-4, rtol=1e-4)
    assert len(block_linears(randomize(CausalWanModel(TINY_DIT)))) == 20
    model = randomize(CausalWanModel(TINY_DIT, attention="sdpa")).eval()
    assert to_fp8_linears_(model) == 20
    out, _ = _stream(model, chunks=1)
    assert torch.isfinite(out[0]).all()
