"""The per-chunk loop never waits for the device: no data-dependent host read (run on the meta device, where
`.item()` / `.cpu()` / `bool(tensor)` raise), and the only host-to-device copies are the seeded noise, copied
non-blocking from pinned memory. Also: the time-embedding memo and the device-resident σ tables."""
import torch
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

from sf_core.cache import KVCache
from sf_core.config import StreamConfig
from sf_core.model import CausalWanModel
from sf_core.noise import SeededNoise
from sf_core.pipeline import StreamingPipeline
from sf_core.scheduler import FlowMatchScheduler
from sf_core.speed.graphs import FastForward
from sf_core.state import StreamState
from sf_core.testing.tiny import TINY_DIT


class Transfers(TorchDispatchMode):
    """Every op whose tensors sit on more than one device: (op name, input devices, output devices, non_blocking)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = {a.device.type for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        outs = {a.device.type for a in tree_leaves(out) if isinstance(a, torch.Tensor)}
        if len(ins | outs) > 1:
            self.seen.append((func.__name__, ins, outs, kwargs.get("non_blocking", False)))
        return out


def _meta_state(cfg: StreamConfig) -> StreamState:
    cache = KVCache.allocate(TINY_DIT, 1, 4, 12, cfg.window, cfg.sink, torch.float32, "meta")
    return StreamState(cache, torch.empty(1, 5, TINY_DIT.text_dim, device="meta"), 4, 4, SeededNoise(1))


def test_chunk_loop_on_the_meta_device_reads_nothing_back_and_copies_only_noise_non_blocking():
    with torch.device("meta"):
        model = CausalWanModel(TINY_DIT, attention="sdpa").eval()
    for forward, cfg in ((model, StreamConfig()), (FastForward(model), StreamConfig(window=6, sink=1))):
        pipe = StreamingPipeline(forward, cfg, device="meta")
        state = _meta_state(cfg)
        pipe.step(state)  # chunk 0 fills the cross-attention cache
        with Transfers() as transfers:
            for _ in range(3):  # with a rolling window, chunk 2 and 3 evict
                pipe.step(state)
        assert state.chunk_index == 4 and state.cache.cross_ready
        steps = len(pipe.timesteps)
        assert len(transfers.seen) == 3 * steps, transfers.seen  # one noise tensor per denoising step
        assert all(op == "_to_copy.default" and ins == {"cpu"} and outs == {"meta"} and nb
                   for op, ins, outs, nb in transfers.seen), transfers.seen


def test_time_embedding_runs_once_per_timestep_value_and_changes_nothing(tiny_model):
    calls = []
    hook = tiny_model.time_embedding.register_forward_hook(lambda *a: calls.append(1))
    runs = []
    for memo in ({}, None):
        tiny_model._time_memo = memo
        pipe = StreamingPipeline(tiny_model, StreamConfig())
        state = pipe.start(torch.randn(1, 5, TINY_DIT.text_dim, generator=torch.Generator().manual_seed(5)),
                           32, 32, seed=1, max_frames=9)
        calls.clear()
        runs.append([pipe.step(state).latents for _ in range(3)])
        runs[-1].append(len(calls))
    hook.remove()
    assert runs[0][-1] == 5 and runs[1][-1] == 15  # 4 denoising values + the cache-pass value, vs 5 per chunk
    assert all(torch.equal(a, b) for a, b in zip(runs[0][:-1], runs[1][:-1]))


def test_time_memo_notices_changed_weights_and_is_off_under_autograd(tiny_model):
    t = torch.full((1, 3), 500.0)
    with torch.no_grad():
        e1, _ = tiny_model.embed_time(t, 3)
        tiny_model.time_embedding[0].weight.mul_(2)
        e2, _ = tiny_model.embed_time(t, 3)
        tiny_model.time_embedding[0].weight.div_(2)
    assert not torch.equal(e1, e2)
    e3, _ = tiny_model.embed_time(t, 3)
    assert e3.requires_grad, "with autograd on the embedding is recomputed, so gradients reach the time MLP"


def test_sigma_tables_move_to_the_device_once():
    sched = FlowMatchScheduler(5.0)
    first = sched.tables("meta")
    assert sched.tables(torch.device("meta"))[0] is first[0]
    assert sched.sigma(torch.full((1, 3), 937.5, device="meta")).device.type == "meta"
    torch.testing.assert_close(sched.sigma(torch.tensor([937.5, 625.0])), torch.tensor([0.9375, 0.625]))
