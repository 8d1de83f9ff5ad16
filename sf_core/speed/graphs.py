"""Faster drop-in forward for the causal DiT: `torch.compile` and CUDA-graph replay.

`FastForward(model, compile=..., cuda_graphs=...)` is called exactly like the model
(x, t, context, cache, start_frame) and can be handed to `StreamingPipeline` in its place. The cache
bookkeeping (plan, eviction, Python-int indices) runs eagerly; only `model.forward_planned` runs compiled
or replayed. For one cache plan (write slots, read range) its shapes and buffer addresses are fixed, so:

* compile: RoPE rotations are passed in as a tensor, so the compiled code does not specialise on the
  chunk position; the plan ints become dynamic after their first change, so a stream compiles a bounded
  number of times whatever its length (tests/speed/test_graphs.py counts them);
* CUDA graphs: one graph per (plan, buffers) key, captured on first use and replayed for the other passes
  of that plan (4 denoising passes + cache pass per chunk; every later chunk in a full rolling window).
  The key holds the address and shape of every tensor the graph reads or writes in place — self-attention
  K and V, cross-attention K and V, the weights — plus the static input shapes, so two caches in one process
  never replay each other's graphs and moved weights are never read at their old addresses. With `compile=True` the compiled function is what gets captured. Captured
  only when the cross-attention cache is ready and autograd is off; otherwise the call runs eagerly.
With both off, the result is bitwise the plain model's.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from sf_core.cache import KVCache
from sf_core.model import CausalWanModel, rope_freqs

MAX_GRAPHS = 64  # captured graphs kept (least recently used dropped): 21 plans for a frame-wise 81-frame clip


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    x: torch.Tensor        # static inputs, refilled before each replay
    t: torch.Tensor
    freqs: torch.Tensor
    out: torch.Tensor      # static output, cloned after each replay


def _buffer(t: torch.Tensor) -> tuple:
    return t.data_ptr(), tuple(t.shape), t.dtype


def graph_key(x: torch.Tensor, t: torch.Tensor, freqs: torch.Tensor, cache: KVCache, cross_cache: KVCache,
              weights: list[torch.Tensor] = ()) -> tuple:
    """Everything a captured graph bakes in: the static input shapes, the cache plan, and the address, shape and
    dtype of every buffer it reads or writes in place (self-attention K/V, cross-attention K/V), and the
    addresses of the model's weights (moved or offloaded weights get new graphs, never stale ones)."""
    p = cache._plan
    return ((tuple(x.shape), x.dtype, tuple(t.shape), tuple(freqs.shape), freqs.dtype),
            (p.write_start, p.write_end, p.read_start),
            tuple(_buffer(b) for b in (cache.k, cache.v, cross_cache.cross_k, cross_cache.cross_v)),
            tuple(w.data_ptr() for w in weights))


class FastForward(nn.Module):
    """The model's chunk forward with optional `torch.compile` (any device) and CUDA graphs (CUDA only)."""

    def __init__(self, model: CausalWanModel, compile: bool = False, compile_mode: str | None = None,
                 cuda_graphs: bool = False, compile_backend: str = "inductor", rope: str | None = None):
        """`rope` ("exact" / "fast") overrides the model's RoPE mode for this forward only (the rotations are
        passed in, and their dtype picks the arithmetic), so the model itself is never changed."""
        super().__init__()
        if compile and cuda_graphs and compile_mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"compile mode {compile_mode!r} records its own CUDA graphs; with cuda_graphs=True "
                             "use the default mode or 'max-autotune-no-cudagraphs'")
        self.model = model
        self.cuda_graphs, self.compiled = cuda_graphs, compile
        self.warm_ups = 0  # eager passes run before captures (see _capture)
        self._planned = (torch.compile(model.forward_planned, mode=compile_mode, backend=compile_backend)
                         if compile else model.forward_planned)
        self.rope_mode = rope or model.rope
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._weights: list[torch.Tensor] = []  # the model's tensors, re-listed once per chunk (see rope())
        self._freqs: tuple | None = None  # (key, rotations) of the last chunk position
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

    def rope(self, x: torch.Tensor, start_frame: int) -> torch.Tensor:
        """RoPE rotations of the chunk x [B, F, C, H, W] at `start_frame`; the 5 passes of a chunk share one.
        A new chunk also re-lists the model's weights for the graph key (3.5 ms at 1.3B on a loaded CPU, once
        per chunk; 0.18 ms per pass for their addresses), so weights replaced between chunks — ComfyUI's
        model manager loading or patching them — never replay a graph built on the old ones."""
        _, f, _, h, w = x.shape
        _, ph, pw = self.model.config.patch_size
        key = (f, h // ph, w // pw, start_frame, x.device, self.rope_mode)
        if self._freqs is None or self._freqs[0] != key:
            self._freqs = key, rope_freqs(f, h // ph, w // pw, self.model.config.head_dim, start_frame, x.device,
                                          self.rope_mode)
            if self.cuda_graphs:
                self._weights = [*self.model.parameters(), *self.model.buffers()]
        return self._freqs[1]

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cache: KVCache | None = None,
                start_frame: int = 0) -> torch.Tensor:
        model = self.model
        if cache is None:
            return self._planned(x, t, context, None, None, 0, None, self.rope(x, start_frame))
        cross_cache = model.cross_cache_for(cache)
        model.begin_cache(cache, x, start_frame)
        freqs = self.rope(x, start_frame)
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
        key = graph_key(x, t, freqs, cache, cross_cache, self._weights)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._graphs[key] = self._capture(x, t, cache, cross_cache, freqs)
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        cap.x.copy_(x)
        cap.t.copy_(t)
        cap.freqs.copy_(freqs)
        cap.graph.replay()
        return cap.out.clone()

    def _capture(self, x, t, cache, cross_cache, freqs) -> _Captured:
        """Capture the (compiled) forward for this key; the replay that follows computes it. Capturing runs
        nothing, so a new plan costs no extra pass — except a warm-up pass on a side stream before the first
        capture, with compile (which compiles there), or when a capture fails because something initialises
        lazily for new shapes (then: warm up, capture again). A warm-up writes this plan's K/V slots with
        exactly the values the replay writes again. Capture errors are thread-local, so a decoder running in
        another thread (overlapped decode) does not invalidate it."""
        sx, st, sf = x.clone(), t.clone(), freqs.clone()
        run = lambda: self._planned(sx, st, None, cache, cross_cache, 0, None, sf)  # noqa: E731
        if self._pool is None or self.compiled:
            self._warm_up(run, x.device)
        try:
            graph, out = self._record(run)
        except RuntimeError:
            self._warm_up(run, x.device)
            graph, out = self._record(run)
        return _Captured(graph, sx, st, sf, out)

    def _warm_up(self, run, device) -> None:
        self.warm_ups += 1
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(device).wait_stream(side)

    def _record(self, run):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = run()
        return graph, out
