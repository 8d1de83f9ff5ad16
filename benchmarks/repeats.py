"""Interleaved repeats for benchmark tables: every configuration runs once per round, in a rotated order, so
machine noise (other processes on shared cores) hits them alike; rows report medians with min–max, ratios are
taken per round and then summarised, and on a CPU they use process CPU time, which other processes do not
inflate the way they inflate wall time."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass(frozen=True)
class Sample:
    wall: float   # seconds
    cpu: float    # process CPU seconds (all threads)


class Stopwatch:
    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> Sample:
        return Sample(time.perf_counter() - self.wall, time.process_time() - self.cpu)


def rounds(names: list[str], repeats: int) -> Iterable[tuple[int, str]]:
    """(round, name) pairs: each round runs every name once, the order rotated by one each round."""
    for r in range(repeats):
        for i in range(len(names)):
            yield r, names[(i + r) % len(names)]


def spread(values: Iterable[float], fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    """'median (min–max)'."""
    v = [x * scale for x in values]
    return f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}–{fmt.format(max(v))})"


def ratios(a: list[float], b: list[float]) -> list[float]:
    """Per-round ratios a_r / b_r of two interleaved series."""
    return [x / y for x, y in zip(a, b)]


def timed(fn: Callable[[], object]) -> tuple[object, Sample]:
    watch = Stopwatch()
    out = fn()
    return out, watch.read()
