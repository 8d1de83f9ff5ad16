"""Faster drop-in forward for the causal DiT: `torch.compile` and CUDA-graph replay.

`FastForward(model, compile=..., cuda_graphs=...)` is called exactly like the model
(x, t, context, cache, start_frame) and can be handed to `StreamingPipeline` in its place. The cache
bookkeeping (plan, eviction, Python-int indices) runs eagerly; only `model.forward_planned` runs compiled
or replayed. For one cache plan (write slots, read range) its shapes and buffer addresses are fixed, so:

* compile: RoPE rotations are passed in as a tensor, so the compiled code does not specialise on the
  chunk position; it specialises on the plan ints (a global 21-frame cache has 7 plans, a rolling cache
  one in steady state);
* CUDA graphs: one graph per plan, captured on first use and replayed for the other passes of that plan
  (4 denoising passes + cache pass per chunk; every later chunk in a full rolling window). Captured only
  when the cross-attention cache is ready and autograd is off; otherwise the call runs eagerly.
With both off, the result is bitwise the plain model's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from sf_core.cache import KVCache
from sf_core.model import CausalWanModel, rope_freqs


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    x: torch.Tensor        # static inputs, refilled before each replay
    t: torch.Tensor
    freqs: torch.Tensor
    out: torch.Tensor      # static output, cloned after each replay


class FastForward(nn.Module):
    """The model's chunk forward with optional `torch.compile` (any device) and CUDA graphs (CUDA only)."""

    def __init__(self, model: CausalWanModel, compile: bool = False, compile_mode: str | None = None,
                 cuda_graphs: bool = False):
        super().__init__()
        self.model = model
        self.cuda_graphs = cuda_graphs
        self._planned = torch.compile(model.forward_planned, mode=compile_mode) if compile else model.forward_planned
        self._graphs: dict[tuple, _Captured] = {}
        self._graph_cache_ptr: int | None = None
        self._pool = None

    # what StreamingPipeline reads off a model
    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def frame_tokens(self, height: int, width: int) -> int:
        return self.model.frame_tokens(height, width)

    @property
    def graphs_captured(self) -> int:
        return len(self._graphs)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cache: KVCache | None = None,
                start_frame: int = 0) -> torch.Tensor:
        model = self.model
        if cache is None:
            return self._planned(x, t, context, None, None, start_frame)
        cross_cache = model.cross_cache_for(cache)
        model.begin_cache(cache, x, start_frame)
        _, _, _, h, w = x.shape
        _, ph, pw = model.config.patch_size
        freqs = rope_freqs(x.shape[1], h // ph, w // pw, model.config.head_dim, start_frame, x.device, model.rope)
        graphable = (self.cuda_graphs and x.device.type == "cuda" and cross_cache is not None
                     and cross_cache.cross_ready and not torch.is_grad_enabled())
        if graphable:
            out = self._replay(x, t, cache, cross_cache, freqs)
        else:
            # start_frame only reaches the RoPE rotations, which are given: pass 0 so nothing specialises on it
            out = self._planned(x, t, context, cache, cross_cache, 0, None, freqs)
        cache.end()
        if cross_cache is not None:
            cross_cache.cross_ready = True
        return out

    # -- CUDA graphs ----------------------------------------------------------------------------------------
    def _replay(self, x, t, cache: KVCache, cross_cache: KVCache, freqs) -> torch.Tensor:
        if self._graph_cache_ptr != cache.k.data_ptr():  # graphs bake buffer addresses: new cache, new graphs
            self._graphs.clear()
            self._graph_cache_ptr = cache.k.data_ptr()
        p = cache._plan
        key = (tuple(x.shape), tuple(t.shape), x.dtype, freqs.dtype, p.write_start, p.write_end, p.read_start)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._graphs[key] = self._capture(x, t, cache, cross_cache, freqs)
        cap.x.copy_(x)
        cap.t.copy_(t)
        cap.freqs.copy_(freqs)
        cap.graph.replay()
        return cap.out.clone()

    def _capture(self, x, t, cache, cross_cache, freqs) -> _Captured:
        """Warm up on a side stream, then capture. Both write this plan's K/V slots with exactly the values
        the replay that follows writes again, so the cache ends up as after one eager call."""
        sx, st, sf = x.clone(), t.clone(), freqs.clone()
        run = lambda: self.model.forward_planned(sx, st, None, cache, cross_cache, 0, None, sf)  # noqa: E731
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = run()
        return _Captured(graph, sx, st, sf, out)
