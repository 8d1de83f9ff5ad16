import pytest
import torch

from sf_core.config import StreamConfig
from sf_core.noise import SeededNoise
from sf_core.pipeline import PromptSwitch, StreamingPipeline
from sf_core.state import StateError, StreamState

from sf_core.testing.tiny import TINY_DIT

H = W = 32  # pixels -> 4×4 latent -> 4 tokens per frame


def _ctx(seed=0, batch=1):
    return torch.randn(batch, 5, TINY_DIT.text_dim, generator=torch.Generator().manual_seed(seed))


def _run(pipe, state, n, prompts=None):
    return torch.cat([c.latents for c in pipe.stream(state, n, prompts)], 1)


def test_stream_yields_chunks_with_positions(tiny_model):
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=6))
    state = pipe.start(_ctx(), H, W, seed=1)
    chunks = list(pipe.stream(state, 4))
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert [c.start_frame for c in chunks] == [0, 3, 6, 9]
    assert chunks[0].latents.shape == (1, 3, TINY_DIT.in_dim, 4, 4)
    assert state.next_frame == 12


def test_chunk_matches_the_official_step_recipe(tiny_model):
    """First chunk recomputed by hand: 4 warped steps, x0 = x − σv, fresh re-noise, cache pass at t=0."""
    pipe = StreamingPipeline(tiny_model)
    noise = SeededNoise(3)
    state = pipe.start(_ctx(), H, W, noise=noise)
    chunk = pipe.step(state)
    from sf_core.cache import KVCache
    cache = KVCache.allocate(TINY_DIT, 1, 4, 21)
    steps, sig = [1000.0, 937.5, 833.3333, 625.0], [1.0, 0.9375, 0.833333, 0.625]
    x = noise(0, 0, (1, 3, 4, 4, 4), torch.float32, "cpu")
    with torch.no_grad():
        for j, t in enumerate(steps):
            v = tiny_model(x, torch.full((1, 3), t), _ctx(), cache, 0)
            x0 = (x.double() - sig[j] * v.double()).float()
            if j < 3:
                x = (1 - sig[j + 1]) * x0 + sig[j + 1] * noise(0, j + 1, (1, 3, 4, 4, 4), torch.float32, "cpu")
    assert (chunk.latents - x0).abs().max() < 1e-4
    assert torch.allclose(state.cache.k[:, :, :12], _cache_after_clean_pass(tiny_model, x0), atol=1e-5)


def _cache_after_clean_pass(model, x0):
    from sf_core.cache import KVCache
    cache = KVCache.allocate(TINY_DIT, 1, 4, 21)
    with torch.no_grad():
        model(x0, torch.zeros(1, 3), _ctx(), cache, 0)
    return cache.k[:, :, :12]


def test_same_seed_replays_identically_and_other_seed_differs(tiny_model):
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=9, sink=3))
    a = _run(pipe, pipe.start(_ctx(), H, W, seed=7), 5)
    b = _run(pipe, pipe.start(_ctx(), H, W, seed=7), 5)
    c = _run(pipe, pipe.start(_ctx(), H, W, seed=8), 5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_batch_equals_single_runs_with_consecutive_seeds(tiny_model):
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=6))
    ctx = _ctx(batch=2)
    both = _run(pipe, pipe.start(ctx, H, W, seed=4), 3)
    one = _run(pipe, pipe.start(ctx[1:], H, W, seed=5), 3)
    assert (both[1:] - one).abs().max() < 1e-5


def test_rolling_with_window_covering_clip_equals_global(tiny_model):
    glob = StreamingPipeline(tiny_model, StreamConfig())
    roll = StreamingPipeline(tiny_model, StreamConfig(window=21))
    a = _run(glob, glob.start(_ctx(), H, W, seed=2), 7)
    b = _run(roll, roll.start(_ctx(), H, W, seed=2), 7)
    assert torch.equal(a, b)


def test_fork_shares_prefix_and_continues_independently(tiny_model):
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=6))
    state = pipe.start(_ctx(), H, W, seed=1)
    prefix = _run(pipe, state, 2)
    twin = state.fork()
    other = state.fork(noise=SeededNoise(99))
    a, b, c = _run(pipe, state, 3), _run(pipe, twin, 3), _run(pipe, other, 3)
    full = _run(pipe, pipe.start(_ctx(), H, W, seed=1), 5)
    assert torch.equal(torch.cat([prefix, a], 1), full)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_save_restore_continues_identically(tiny_model, tmp_path):
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=9, sink=3))
    state = pipe.start(_ctx(), H, W, seed=5)
    _run(pipe, state, 4)
    state.extras["vae.feat0"] = torch.arange(6.0)
    state.save(tmp_path / "s.safetensors")
    back = StreamState.load(tmp_path / "s.safetensors")
    assert torch.equal(back.extras["vae.feat0"], torch.arange(6.0))
    assert torch.equal(_run(pipe, state, 3), _run(pipe, back, 3))


def test_bad_state_files_are_explained(tmp_path):
    with pytest.raises(StateError, match="not found"):
        StreamState.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(StateError, match="not a readable safetensors"):
        StreamState.load(bad)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(StateError, match="expected 'sf_stream_state/1'"):
        StreamState.load(tmp_path / "other.safetensors")


def test_prompt_switch_changes_only_later_chunks(tiny_model):
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=6))
    base = _run(pipe, pipe.start(_ctx(0), H, W, seed=1), 4)
    switched = _run(pipe, pipe.start(_ctx(0), H, W, seed=1), 4, {2: PromptSwitch(_ctx(1))})
    recached = _run(pipe, pipe.start(_ctx(0), H, W, seed=1), 4, {2: PromptSwitch(_ctx(1), recache=True)})
    assert torch.equal(base[:, :6], switched[:, :6])
    assert not torch.allclose(base[:, 6:], switched[:, 6:])
    assert not torch.allclose(switched[:, 6:], recached[:, 6:])
    fresh = _run(pipe, pipe.start(_ctx(1), H, W, seed=1), 2)  # recache == history encoded under prompt 1
    assert not torch.allclose(fresh, recached[:, 6:])


def test_recache_equals_encoding_the_window_under_the_new_prompt(tiny_model):
    """After a recache, the cache holds exactly what clean passes under the new prompt would write."""
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=6))
    state = pipe.start(_ctx(0), H, W, seed=1)
    _run(pipe, state, 3)
    pipe.switch_prompt(state, _ctx(1), recache=True)
    ref = pipe.start(_ctx(1), H, W)
    ref.cache.global_end = 3 * 4
    with torch.no_grad():
        for a in (0, 3):
            tiny_model(state.history[:, a:a + 3], torch.zeros(1, 3), _ctx(1), ref.cache, 3 + a)
    assert torch.equal(state.cache.k[:, :, :24], ref.cache.k[:, :, :24])


def test_prefill_initial_latents(tiny_model):
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=9))
    init = torch.randn(1, 4, TINY_DIT.in_dim, 4, 4)
    state = pipe.start(_ctx(), H, W, seed=1, initial_latents=init)
    assert state.next_frame == 4 and state.cache.global_end == 16
    chunk = pipe.step(state)
    assert chunk.start_frame == 4
    plain = pipe.step(pipe.start(_ctx(), H, W, seed=1))
    assert not torch.allclose(chunk.latents, plain.latents)


def test_unbounded_rolling_stream_past_rope_table(tiny_model):
    """Shifting every position changes nothing (q·k depends on distances only), so a stream can be
    continued past latent frame 1023, the end of the official RoPE table."""
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=6, chunk_frames=3))
    a = pipe.start(_ctx(), 16, 16, seed=0)  # 2×2 latent -> 1 token per frame
    b = pipe.start(_ctx(), 16, 16, seed=0)
    b.next_frame, b.cache.global_end = 1017, 1017  # as if 339 chunks had already been generated
    xa, xb = _run(pipe, a, 4), _run(pipe, b, 4)
    assert b.next_frame == 1029
    assert torch.isfinite(xb).all()
    assert (xa - xb).abs().max() < 1e-4


def test_bad_sizes_and_contexts(tiny_model):
    pipe = StreamingPipeline(tiny_model)
    with pytest.raises(ValueError, match="multiples of 16.*nearest valid size: 480×832"):
        pipe.start(_ctx(), 481, 830)
    with pytest.raises(ValueError, match=r"context must be \[B, L, 32\]"):
        pipe.start(torch.randn(1, 5, 7), H, W)


def test_step_callback_and_final_chunk_without_cache_pass(tiny_model):
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=6))
    seen = []
    state = pipe.start(_ctx(), H, W, seed=1)
    a = pipe.step(state, callback=lambda j, n: seen.append((j, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    ref = pipe.start(_ctx(), H, W, seed=1)
    pipe.step(ref)
    last = pipe.step(state, commit=False)
    assert torch.equal(last.latents, pipe.step(ref).latents)  # same chunk, one pass fewer
    with pytest.raises(RuntimeError, match="cannot be continued"):
        pipe.step(state)


def test_recache_keeps_the_original_block_boundaries(tiny_model):
    """A 4-frame prefill (blocks [0,1) and [1,4)) and chunks [4,7), [7,10): a recache re-passes exactly these
    blocks, so the cache equals passing them under the new prompt (not a re-chunking from the window start)."""
    pipe = StreamingPipeline(tiny_model, StreamConfig(window=12))
    init = torch.randn(1, 4, TINY_DIT.in_dim, 4, 4, generator=torch.Generator().manual_seed(5))
    state = pipe.start(_ctx(0), H, W, seed=1, initial_latents=init)
    _run(pipe, state, 2)
    assert state.info["block_starts"] == [0, 1, 4, 7]
    pipe.switch_prompt(state, _ctx(1), recache=True)
    ref = pipe.start(_ctx(1), H, W)
    frames = state.history
    with torch.no_grad():
        for a, b in ((0, 1), (1, 4), (4, 7), (7, 10)):
            tiny_model(frames[:, a:b], torch.zeros(1, b - a), _ctx(1), ref.cache, a)
    assert torch.equal(state.cache.k[:, :, :40], ref.cache.k[:, :, :40])


def test_stream_under_inference_mode_equals_no_grad(tiny_model):
    """ComfyUI runs nodes under torch.inference_mode (inference tensors have no version counter)."""
    context = torch.randn(1, 16, tiny_model.config.text_dim)
    pipe = StreamingPipeline(tiny_model, StreamConfig(chunk_frames=2, window=4))
    state = pipe.start(context, 32, 32, seed=5)
    expected = [pipe.step(state).latents for _ in range(3)]
    with torch.inference_mode():
        pipe = StreamingPipeline(tiny_model, StreamConfig(chunk_frames=2, window=4))
        state = pipe.start(context, 32, 32, seed=5)
        got = [pipe.step(state).latents for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_forks_of_a_global_stream_continue_in_place_and_exactly(tiny_model):
    """A fork shares the KV cache copy-on-write: the first continuation appends in place, a second branch
    and the original copy on their first write, and every branch equals one uninterrupted stream."""
    pipe = StreamingPipeline(tiny_model, StreamConfig(chunk_frames=2))
    state = pipe.start(_ctx(), H, W, seed=1, max_frames=10)
    prefix = _run(pipe, state, 2)
    first, second = state.fork(), state.fork()
    buffer = state.cache.k.data_ptr()
    a = _run(pipe, first, 3)
    assert first.cache.k.data_ptr() == buffer  # no copy: appended after everything the others can read
    b, c = _run(pipe, second, 3), _run(pipe, state, 3)
    assert second.cache.k.data_ptr() != buffer and state.cache.k.data_ptr() != buffer
    full = _run(pipe, pipe.start(_ctx(), H, W, seed=1, max_frames=10), 5)
    assert all(torch.equal(torch.cat([prefix, x], 1), full) for x in (a, b, c))
