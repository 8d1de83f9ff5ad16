"""KV cache of the causal DiT: self-attention K (post-RoPE) / V per layer, plus the cross-attention cache.

Semantics follow the official implementation (selfforcing.md §3.3), with token indices derived from
`frame_tokens` = (H_latent/2)·(W_latent/2):

* a call covers tokens [cs, ce) of the stream; `global_end` (G) is one past the last token ever written,
  `local_end` (Lc) the end inside the physical buffer of capacity S;
* rolling mode (`window` W frames, `sink` frames) evicts only when the call starts a new chunk (ce > G)
  and the buffer would overflow; the first `sink` frames never move;
* re-passes of the same chunk (ce == G: later denoising steps, the cache-update pass) overwrite their own
  slots in place;
* queries read [max(0, Lc' - A), Lc'), A = S, so attention is bidirectional inside a chunk and causal
  across chunks.

Buffers are preallocated once as [layers, B, S, heads, head_dim]; eviction shifts tokens with
non-overlapping copies, so the hot loop allocates nothing.

`share()` gives a copy-on-write twin: both read the same buffers until one of them writes where the
other could read. Appending past every token any sharer wrote is free (a continued global cache);
anything else (rolling eviction, a re-cache from token 0, a second branch) copies the buffers once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


class CacheError(RuntimeError):
    """The cache cannot hold the requested write."""


class _Shared:
    """Bookkeeping of buffers several caches read: the one cache that may append in place, from where,
    and the high-water mark of everything written (no sharer reads past it)."""

    def __init__(self, frontier: int):
        self.owner: "KVCache | None" = None
        self.owned_from = 0
        self.frontier = frontier


@dataclass(frozen=True)
class _Plan:
    write_start: int
    write_end: int
    read_start: int
    global_end: int
    local_end: int


class KVCache:
    def __init__(self, k: torch.Tensor, v: torch.Tensor, cross_k: torch.Tensor, cross_v: torch.Tensor,
                 frame_tokens: int, window: int = -1, sink: int = 0):
        self.k, self.v = k, v                          # [layers, B, S, heads, head_dim]
        self.cross_k, self.cross_v = cross_k, cross_v  # [layers, B, text_len, heads, head_dim]
        self.frame_tokens = frame_tokens
        self.window = window
        self.sink = sink
        self.global_end = 0
        self.local_end = 0
        self.cross_ready = False
        self._plan: _Plan | None = None
        self._shared: _Shared | None = None

    @classmethod
    def allocate(cls, config, batch: int, frame_tokens: int, capacity_frames: int, window: int = -1,
                 sink: int = 0, dtype=torch.float32, device="cpu") -> "KVCache":
        """Global mode: capacity = `capacity_frames`; rolling mode (window > 0): capacity = window."""
        if window != -1:
            if window <= 0:
                raise CacheError(f"window must be -1 (global) or a positive number of latent frames, got {window}")
            if sink < 0 or sink >= window:
                raise CacheError(f"sink ({sink} frames) must be in [0, window={window})")
            capacity_frames = window
        elif sink:
            raise CacheError("a sink needs a rolling window (window > 0); global caches never evict")
        shape = (config.num_layers, batch, capacity_frames * frame_tokens, config.num_heads, config.head_dim)
        cross = (config.num_layers, batch, config.text_len, config.num_heads, config.head_dim)
        z = lambda s: torch.zeros(s, dtype=dtype, device=device)  # noqa: E731
        return cls(z(shape), z(shape), z(cross), z(cross), frame_tokens, window, sink)

    # -- geometry -----------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def rolling(self) -> bool:
        return self.window != -1

    @property
    def frames_held(self) -> int:
        return self.local_end // self.frame_tokens

    def reserve(self, frames: int) -> None:
        """Grow a global cache so it holds at least `frames` latent frames (rolling caches are fixed-size).

        Attention reads everything a global cache holds, so growing it changes no result. It reallocates
        (by at least half the capacity, so a chain of k extensions reallocates O(log k) times) and copies
        only the tokens in use, so call it between chunks, never inside the hot loop.
        """
        if self.reserved_frames(frames) * self.frame_tokens != self.capacity:
            self._move_to(self.reserved_frames(frames) * self.frame_tokens)

    def reserved_frames(self, frames: int) -> int:
        """The capacity in latent frames `reserve(frames)` leaves (to size the memory it needs beforehand)."""
        have = self.capacity // self.frame_tokens
        if self.rolling or frames <= have:
            return have
        return max(frames, -(-3 * have // 2))

    def _move_to(self, capacity: int) -> None:
        """Own fresh buffers of `capacity` tokens holding this cache's tokens (leaves any sharer alone)."""
        used = self.local_end
        shape = (*self.k.shape[:2], capacity, *self.k.shape[3:])
        k, v = self.k.new_zeros(shape), self.v.new_zeros(shape)
        k[:, :, :used].copy_(self.k[:, :, :used])
        v[:, :, :used].copy_(self.v[:, :, :used])
        self.k, self.v, self._shared = k, v, None

    def share(self) -> "KVCache":
        """A copy-on-write twin: no copy now; whichever of the two later writes where the other reads
        copies the buffers first (continuing a global cache past its end never does)."""
        if self._shared is None:
            self._shared = _Shared(self.local_end)
        self._shared.owner = None  # from now on the twin reads up to here: nobody may append in place below
        self._shared.frontier = max(self._shared.frontier, self.local_end)
        twin = KVCache(self.k, self.v, self.cross_k.clone(), self.cross_v.clone(), self.frame_tokens,
                       self.window, self.sink)
        twin.global_end, twin.local_end, twin.cross_ready = self.global_end, self.local_end, self.cross_ready
        twin._shared = self._shared
        return twin

    @property
    def shared(self) -> bool:
        """Whether the buffers are (still) read by another cache."""
        return self._shared is not None

    def _claim(self, lowest: int, end: int) -> None:
        """Before writing physical tokens [lowest, end): copy shared buffers unless this write is safe."""
        s = self._shared
        if s is None:
            return
        if not (s.owner is self and lowest >= s.owned_from):
            if lowest < s.frontier:
                self._move_to(self.capacity)
                return
            s.owner, s.owned_from = self, lowest
        s.frontier = max(s.frontier, end)

    def reset(self) -> None:
        """Forget everything (the buffers are reused)."""
        self.global_end = self.local_end = 0
        self.cross_ready = False
        self._plan = None

    # -- one forward call -----------------------------------------------------------------------------
    def begin(self, start_token: int, num_tokens: int) -> None:
        """Plan the write of tokens [start_token, start_token + num_tokens); evicts if needed."""
        cs, length = start_token, num_tokens
        ce = cs + length
        g, lc, s = self.global_end, self.local_end, self.capacity
        if ce != g and cs != g:
            raise CacheError(f"cache write at tokens [{cs}, {ce}) does not continue the cache, which ends at "
                             f"token {g}: a call must re-pass the last chunk or write the next one")
        advance = ce - g
        n_evict = 0
        sink = self.sink * self.frame_tokens
        if self.rolling and length > s - sink:
            raise CacheError(f"a chunk of {length // self.frame_tokens} frames does not fit a window of "
                             f"{self.window} frames with {self.sink} sink frames")
        evict = self.rolling and ce > g and lc + length > s
        if evict:
            n_evict = length + lc - s
        new_lc = lc + advance - n_evict
        if new_lc <= s:
            self._claim(sink if evict else new_lc - length, new_lc)
        if evict:
            self._shift_left(sink, n_evict, lc - n_evict - sink)
        if new_lc > s:
            raise CacheError(
                f"global KV cache full: it holds {s // self.frame_tokens} latent frames and this chunk ends at "
                f"frame {ce // self.frame_tokens}; allocate more frames or use a rolling window")
        self._plan = _Plan(new_lc - length, new_lc, max(0, new_lc - s), max(g, ce), new_lc)

    def _shift_left(self, dst: int, by: int, count: int) -> None:
        """Move tokens [dst+by, dst+by+count) to [dst, dst+count) with non-overlapping copies."""
        for buf in (self.k, self.v):
            done = 0
            while done < count:
                n = min(by, count - done)
                buf[:, :, dst + done: dst + done + n].copy_(buf[:, :, dst + by + done: dst + by + done + n])
                done += n

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's post-RoPE k/v [B, L, heads, head_dim] for `layer`; return the keys/values to attend to.

        Without autograd the result is a view of the buffer (no allocation). With autograd the cached
        context is detached and concatenated with the live k/v, so gradients reach only this call's
        projections and later in-place writes cannot corrupt saved tensors.
        """
        p = self._plan
        if p is None:
            raise CacheError("KVCache.update called outside begin()/end()")
        kb, vb = self.k[layer], self.v[layer]
        kb[:, p.write_start:p.write_end] = k.detach()
        vb[:, p.write_start:p.write_end] = v.detach()
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            return (torch.cat([kb[:, p.read_start:p.write_start], k], 1),
                    torch.cat([vb[:, p.read_start:p.write_start], v], 1))
        return kb[:, p.read_start:p.write_end], vb[:, p.read_start:p.write_end]

    def end(self) -> None:
        p = self._plan
        self.global_end, self.local_end, self._plan = p.global_end, p.local_end, None

    # -- copies and persistence -------------------------------------------------------------------------
    def clone(self) -> "KVCache":
        c = KVCache(self.k.clone(), self.v.clone(), self.cross_k.clone(), self.cross_v.clone(),
                    self.frame_tokens, self.window, self.sink)
        c.global_end, c.local_end, c.cross_ready = self.global_end, self.local_end, self.cross_ready
        return c

    def state_dict(self, prefix: str = "cache.") -> dict[str, torch.Tensor]:
        meta = torch.tensor([self.global_end, self.local_end, int(self.cross_ready), self.frame_tokens,
                             self.window, self.sink], dtype=torch.long)
        used = self.local_end
        return {prefix + "k": self.k[:, :, :used], prefix + "v": self.v[:, :, :used],
                prefix + "cross_k": self.cross_k, prefix + "cross_v": self.cross_v,
                prefix + "capacity": torch.tensor(self.capacity), prefix + "meta": meta}

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], prefix: str = "cache.", device=None,
                        dtype=None) -> "KVCache":
        try:
            g, lc, ready, ft, window, sink = (int(x) for x in sd[prefix + "meta"].tolist())
            k, v = sd[prefix + "k"], sd[prefix + "v"]
            ck, cv = sd[prefix + "cross_k"], sd[prefix + "cross_v"]
            capacity = int(sd[prefix + "capacity"])
        except KeyError as e:
            raise CacheError(f"stream state has no KV cache entry {e.args[0]!r}") from None
        dtype = dtype or k.dtype
        full = torch.zeros((k.shape[0], k.shape[1], capacity, *k.shape[3:]), dtype=dtype, device=device)
        vfull = torch.zeros_like(full)
        full[:, :, :lc] = k.to(full)
        vfull[:, :, :lc] = v.to(vfull)
        c = cls(full, vfull, ck.to(device=device, dtype=dtype), cv.to(device=device, dtype=dtype), ft, window, sink)
        c.global_end, c.local_end, c.cross_ready = g, lc, bool(ready)
        return c
