"""The last N frames of a stream, in memory that does not grow with the stream's length."""
from __future__ import annotations

from collections import deque

import torch


class Tail:
    """Keeps the last `limit` entries along `dim` of the pieces appended (None: all of them; 0: none).

    Holds at most `limit` entries plus one piece, so an endless stream costs what its last N frames cost.
    """

    def __init__(self, limit: int | None, dim: int = 0):
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be None (keep all) or >= 0, got {limit}")
        self.limit, self.dim = limit, dim
        self._pieces: deque[torch.Tensor] = deque()
        self._held = 0
        self._empty: torch.Tensor | None = None  # a zero-length piece: the shape of `result()` when empty
        self.seen = 0                             # entries appended so far

    def append(self, piece: torch.Tensor) -> None:
        self.seen += piece.shape[self.dim]
        if self._empty is None:
            self._empty = piece.narrow(self.dim, 0, 0).clone()
        if self.limit == 0:
            return
        self._pieces.append(piece)
        self._held += piece.shape[self.dim]
        while self.limit is not None and self._held - self._pieces[0].shape[self.dim] >= self.limit:
            self._held -= self._pieces.popleft().shape[self.dim]

    def result(self) -> torch.Tensor | None:
        """The kept entries, concatenated (None if nothing was ever appended)."""
        if not self._pieces:
            return self._empty
        out = torch.cat(list(self._pieces), dim=self.dim)
        if self.limit is not None and out.shape[self.dim] > self.limit:
            out = out.narrow(self.dim, out.shape[self.dim] - self.limit, self.limit)
        return out
