"""FastForward: what a CUDA graph is keyed on, compile + CUDA graphs together, and the recompile bound.
The GPU-only tests skip here; the keying and compile logic they rely on runs on the CPU."""
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from sf_core.cache import KVCache
from sf_core.config import StreamConfig
from sf_core.model import CausalWanModel
from sf_core.pipeline import StreamingPipeline
from sf_core.speed.graphs import FastForward, graph_key
from sf_core.testing.tiny import TINY_DIT, randomize

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _ctx(device="cpu"):
    return torch.randn(1, 5, TINY_DIT.text_dim, generator=torch.Generator().manual_seed(5)).to(device)


def _planned_cache(frames=6):
    cache = KVCache.allocate(TINY_DIT, 1, 4, frames)
    cache.begin(0, 12)
    return cache


def test_graph_key_names_every_buffer_a_graph_writes_or_reads():
    x, t, freqs = torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3), torch.zeros(12, 1, 16, 2)
    a, b = _planned_cache(), _planned_cache()
    assert graph_key(x, t, freqs, a, a) == graph_key(x, t, freqs, a, a)
    assert graph_key(x, t, freqs, a, a) != graph_key(x, t, freqs, b, b), "two caches never share a graph"
    for name in ("k", "v", "cross_k", "cross_v"):  # any one buffer replaced: another graph
        c = _planned_cache()
        for other in ("k", "v", "cross_k", "cross_v"):
            setattr(c, other, getattr(a, other))
        setattr(c, name, getattr(a, name).clone())
        assert graph_key(x, t, freqs, c, c) != graph_key(x, t, freqs, a, a), name
    a.end()
    a.begin(12, 12)  # the next chunk: another plan
    assert graph_key(x, t, freqs, a, a) != graph_key(x, t, freqs, b, b)
    assert graph_key(x, t, freqs.double(), b, b) != graph_key(x, t, freqs, b, b), "the RoPE buffer's dtype"
    w = [torch.zeros(3)]
    before = graph_key(x, t, freqs, b, b, w)
    w[0].data = torch.zeros(3)  # moved / offloaded and back: same tensor object, new storage
    assert graph_key(x, t, freqs, b, b, w) != before, "weights at a new address: another graph"


def test_compile_modes_with_their_own_cuda_graphs_are_refused_with_cuda_graphs(tiny_model):
    with pytest.raises(ValueError, match="own CUDA graphs"):
        FastForward(tiny_model, compile=True, compile_mode="reduce-overhead", cuda_graphs=True)


@pytest.mark.parametrize("cfg,chunks,frames", [(StreamConfig(), 7, 21), (StreamConfig(chunk_frames=1), 21, 21),
                                               (StreamConfig(window=6, sink=1), 6, 6)])
def test_compile_recompiles_a_bounded_number_of_times_whatever_the_plans(cfg, chunks, frames):
    """3 graphs per stream: the first pass (cross-attention K/V computed), the first cached pass, and one
    with the plan ints dynamic; 7 plans (81-frame global cache) or 21 (frame-wise) add none. The eager
    backend traces exactly what inductor would compile and runs the same ops, so outputs are bitwise."""
    torch.manual_seed(0)
    model = randomize(CausalWanModel(TINY_DIT, attention="sdpa", rope="fast")).eval()
    outs = []
    torch._dynamo.reset()
    counters.clear()
    for forward in (model, FastForward(model, compile=True, compile_backend="eager")):
        pipe = StreamingPipeline(forward, cfg)
        state = pipe.start(_ctx(), 32, 32, seed=1, max_frames=frames)
        outs.append([pipe.step(state).latents for _ in range(chunks)])
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert all(torch.equal(a, b) for a, b in zip(*outs))


@cuda
def test_two_caches_in_one_process_each_replay_their_own_graphs():
    torch.manual_seed(0)
    model = randomize(CausalWanModel(TINY_DIT, attention="sdpa")).eval().cuda()
    fast = FastForward(model, cuda_graphs=True)
    plain_pipe, pipe = StreamingPipeline(model, StreamConfig(window=6, sink=1)), StreamingPipeline(fast, StreamConfig(window=6, sink=1))
    ref = [plain_pipe.start(_ctx("cuda") * s, 32, 32, seed=s, max_frames=6) for s in (1, 2)]
    got = [pipe.start(_ctx("cuda") * s, 32, 32, seed=s, max_frames=6) for s in (1, 2)]
    for _ in range(4):  # interleaved: stream 1, stream 2, stream 1, ...
        for r, g in zip(ref, got):
            torch.testing.assert_close(pipe.step(g).latents, plain_pipe.step(r).latents, atol=1e-5, rtol=1e-5)
    assert fast.graphs_captured >= 2
    assert fast.warm_ups == 1, "only the first capture runs a warm-up pass"


@cuda
def test_compile_and_cuda_graphs_capture_the_compiled_function():
    torch.manual_seed(0)
    model = randomize(CausalWanModel(TINY_DIT, attention="sdpa", rope="fast")).eval().cuda()
    torch._dynamo.reset()
    counters.clear()
    fast = FastForward(model, compile=True, cuda_graphs=True)
    cfg = StreamConfig(window=6, sink=1)
    plain, graphed = (StreamingPipeline(m, cfg) for m in (model, fast))
    a, b = (p.start(_ctx("cuda"), 32, 32, seed=1, max_frames=6) for p in (plain, graphed))
    for _ in range(4):
        torch.testing.assert_close(graphed.step(b).latents, plain.step(a).latents, atol=1e-4, rtol=1e-4)
    assert fast.graphs_captured > 0 and counters["stats"]["unique_graphs"] >= 1, "the captured function is compiled"


@cuda
def test_steady_state_chunk_has_no_cuda_sync():
    torch.manual_seed(0)
    model = randomize(CausalWanModel(TINY_DIT, attention="sdpa")).eval().cuda()
    for forward in (model, FastForward(model, cuda_graphs=True)):
        pipe = StreamingPipeline(forward, StreamConfig(window=6, sink=1))
        state = pipe.start(_ctx("cuda"), 32, 32, seed=1, max_frames=6)
        pipe.step(state)
        pipe.step(state)
        torch.cuda.set_sync_debug_mode("error")
        try:
            pipe.step(state)
        finally:
            torch.cuda.set_sync_debug_mode("default")
