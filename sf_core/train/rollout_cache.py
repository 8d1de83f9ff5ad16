"""The KV cache of a training rollout: append-only storage, rolling window by index selection.

It duck-types `sf_core.cache.KVCache` for `CausalWanModel.forward` (begin / update / end, cross cache),
with two differences that make gradient checkpointing safe:

* storage is global and append-only (capacity = the whole clip), so the context of a finished chunk is
  never moved; the rolling window (`window` frames, `sink` pinned frames) is applied when reading, by
  selecting the same frames the inference cache would still hold after its evictions (selfforcing.md §3.3:
  frames [0, sink) ∪ [max(sink, e − (window − sink)), e) for a chunk ending at frame e);
* `read_only()` gives a view that attends to the stored context without writing, used for the exit-step
  forward: its own K/V are overwritten by the cache-update pass anyway, and a recomputation during
  backward (checkpointing) then sees exactly the context of the first forward.
"""
from __future__ import annotations

import torch


class RolloutCache:
    def __init__(self, k: torch.Tensor, v: torch.Tensor, cross_k: torch.Tensor, cross_v: torch.Tensor,
                 frame_tokens: int, window: int = -1, sink: int = 0, writable: bool = True):
        self.k, self.v = k, v                          # [layers, B, S, heads, head_dim]
        self.cross_k, self.cross_v = cross_k, cross_v  # [layers, B, text_len, heads, head_dim]
        self.frame_tokens, self.window, self.sink = frame_tokens, window, sink
        self.writable = writable
        self.cross_ready = False
        self.written = 0            # tokens [0, written) hold K/V
        self._plan: tuple[int, int] | None = None

    @classmethod
    def allocate(cls, config, batch: int, frame_tokens: int, frames: int, window: int = -1, sink: int = 0,
                 dtype=torch.float32, device="cpu") -> "RolloutCache":
        if window != -1 and not 0 <= sink < window:
            raise ValueError(f"rollout window {window} frames needs 0 <= sink ({sink}) < window")
        shape = (config.num_layers, batch, frames * frame_tokens, config.num_heads, config.head_dim)
        cross = (config.num_layers, batch, config.text_len, config.num_heads, config.head_dim)
        z = lambda s: torch.zeros(s, dtype=dtype, device=device)  # noqa: E731
        return cls(z(shape), z(shape), z(cross), z(cross), frame_tokens, window, sink)

    def read_only(self) -> "RolloutCache":
        """A view on the same storage that reads but never writes (cross cache shared once it is ready)."""
        ready = self.cross_ready
        ck, cv = (self.cross_k, self.cross_v) if ready else (torch.zeros_like(self.cross_k),
                                                             torch.zeros_like(self.cross_v))
        view = RolloutCache(self.k, self.v, ck, cv, self.frame_tokens, self.window, self.sink, writable=False)
        view.cross_ready, view.written = ready, self.written
        return view

    def context_frames(self, start_frame: int, end_frame: int) -> list[int]:
        """Absolute frames (before `start_frame`) that a chunk [start_frame, end_frame) attends to."""
        if self.window == -1:
            return list(range(start_frame))
        recent = max(self.sink, end_frame - (self.window - self.sink))
        return [f for f in range(start_frame) if f < self.sink or f >= recent]

    # -- the KVCache protocol used by CausalWanModel.forward -----------------------------------------------
    def begin(self, start_token: int, num_tokens: int) -> None:
        if start_token % self.frame_tokens or num_tokens % self.frame_tokens:
            raise ValueError("rollout cache writes must cover whole frames")
        if start_token > self.written:
            raise ValueError(f"chunk at token {start_token} skips past the cached context ending at {self.written}")
        if start_token + num_tokens > self.k.shape[2]:
            raise ValueError(f"rollout cache holds {self.k.shape[2] // self.frame_tokens} frames; the chunk "
                             f"ends at frame {(start_token + num_tokens) // self.frame_tokens}")
        self._plan = (start_token, start_token + num_tokens)

    def _context(self, buf: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Context tokens [B, Lc, heads, head_dim] for a chunk at tokens [start, end)."""
        ft = self.frame_tokens
        frames = self.context_frames(start // ft, end // ft)
        if not frames:
            return buf[:, :0]
        if frames == list(range(frames[0], frames[-1] + 1)):
            return buf[:, frames[0] * ft:(frames[-1] + 1) * ft]
        cut = next(i for i in range(1, len(frames)) if frames[i] != frames[i - 1] + 1)
        a, b = frames[:cut], frames[cut:]
        return torch.cat([buf[:, a[0] * ft:(a[-1] + 1) * ft], buf[:, b[0] * ft:(b[-1] + 1) * ft]], 1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k/v [B, L, heads, head_dim] of this call -> (context ++ this call) keys/values to attend to."""
        start, end = self._plan
        if self.writable:
            self.k[layer][:, start:end] = k.detach()
            self.v[layer][:, start:end] = v.detach()
        ck, cv = self._context(self.k[layer], start, end), self._context(self.v[layer], start, end)
        return torch.cat([ck.to(k.dtype), k], 1), torch.cat([cv.to(v.dtype), v], 1)

    def end(self) -> None:
        """A read-only view keeps its plan: per-block activation checkpointing recomputes after end()."""
        if self.writable:
            self.written = max(self.written, self._plan[1])
            self._plan = None
