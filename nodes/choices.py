"""Explicit widget choices for stream settings that default to the checkpoint's value.

A menu offers the named choices ("checkpoint", "global") and common numbers; any whole number is accepted from
the API too. Graphs saved before these menus (INT widgets where 0 / -1 meant "the checkpoint's value") keep
loading: `parse` maps those legacy values to the named choice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CHECKPOINT = "checkpoint"
GLOBAL = "global"


@dataclass(frozen=True)
class Choice:
    name: str
    numbers: tuple[int, ...]             # offered in the menu
    legacy: dict[int, str]               # old INT widget values -> their named choice
    named: tuple[str, ...] = (CHECKPOINT,)
    minimum: int = 1
    tooltip: str = field(default="", compare=False)

    def options(self) -> list[str]:
        return [*self.named, *map(str, self.numbers)]

    def widget(self) -> tuple[list[str], dict]:
        return self.options(), {"default": self.named[0], "tooltip": self.tooltip}

    def parse(self, value) -> str | int:
        """A named choice or a whole number >= `minimum`; legacy INT values map to their named choice."""
        if isinstance(value, str) and value.strip() in self.named:
            return value.strip()
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, float) and value != number:
            raise ValueError(f"{self.name}: {value!r} is neither one of {list(self.named)} nor a whole number")
        if number in self.legacy:
            return self.legacy[number]
        if number < self.minimum:
            raise ValueError(f"{self.name}: {number} is below {self.minimum}; choose {' / '.join(self.named)} "
                             f"or a number from {self.minimum}")
        return number


CHUNK_FRAMES = Choice("chunk_frames", (1, 2, 3, 4, 5, 6, 7, 8), {0: CHECKPOINT}, tooltip=(
    "Latent frames per chunk (1 latent = 4 video frames). checkpoint: the file's setting (3 for Self Forcing)."))
STEPS = Choice("steps", (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 30, 40, 50), {0: CHECKPOINT}, tooltip=(
    "Denoising steps per chunk. checkpoint: the file's setting (4 for Self Forcing)."))
CACHE_WINDOW = Choice("cache_window", (6, 9, 12, 15, 18, 21, 24, 27, 30, 36, 42, 48, 63, 84),
                      {0: CHECKPOINT, -1: GLOBAL}, named=(CHECKPOINT, GLOBAL), tooltip=(
    "KV cache. checkpoint: the file's setting; global: keep every frame (memory grows with the length); "
    "N: rolling window of N latent frames (bounded memory, endless streams)."))
CACHE_SINK = Choice("cache_sink", (0, 1, 2, 3, 4, 6, 8), {-1: CHECKPOINT}, minimum=0, tooltip=(
    "First latent frames kept forever in a rolling window (attention sink). checkpoint: the file's setting."))
