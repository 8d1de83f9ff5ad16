"""Stream timing (pixel frames ↔ chunks ↔ seconds) and prompt schedules with switch points.

Pixel frames per chunk of `n` latent frames, for a decoder of temporal stride `s` (4 for the Wan VAE and
TAEHV, 1 for the toy pixels): the very first chunk of a stream decodes to `1 + s(n − 1)` frames (the first
latent gives one frame), every later chunk to `s·n` — with the Wan VAE 4n − 3, then 4n.

A schedule is text, one switch per line:

    0s: a cat sleeping on a sofa
    4.5s: the cat wakes up and stretches
    chunk 6: the cat jumps off the sofa

`<seconds>s:` switches at the chunk starting nearest that time; `chunk <k>:` (or a bare `<k>:`) at chunk
index `k`. Empty lines and lines starting with `#` are ignored.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from sf_core.pipeline import PromptSwitch
from sf_core.text.limits import quote

_LINE = re.compile(r"^\s*(?:(?P<sec>\d+(?:\.\d+)?)\s*s|(?:chunk\s*)?(?P<chunk>\d+))\s*:\s*(?P<prompt>.*?)\s*$",
                   re.IGNORECASE)


class ScheduleError(ValueError):
    """A prompt schedule line cannot be parsed."""


# ---------------------------------------------------------------------------------------------------
# Timing


def chunk_frame_counts(chunk_frames: int, temporal_stride: int = 4) -> tuple[int, int]:
    """Video frames from a stream's first chunk and from each later chunk: (1 + s(n − 1), s·n).

    The one place this rule lives; the timing functions below take the two counts it returns.
    """
    return 1 + temporal_stride * (chunk_frames - 1), temporal_stride * chunk_frames


def decoder_frame_counts(decoder, chunk_frames: int) -> tuple[int, int]:
    """`chunk_frame_counts` for a decoder (or decoder class) with a `temporal_stride` attribute (default 4)."""
    return chunk_frame_counts(chunk_frames, getattr(decoder, "temporal_stride", 4))


def frames_in_chunk(chunk_index: int, chunk_frames: int, temporal_stride: int = 4) -> int:
    """Pixel frames chunk `chunk_index` decodes to (with the Wan VAE the first chunk has 3 fewer)."""
    first, later = chunk_frame_counts(chunk_frames, temporal_stride)
    return first if chunk_index == 0 else later


def chunk_start_frame(chunk_index: int, first: int, later: int) -> int:
    """First video frame of chunk `chunk_index`."""
    return 0 if chunk_index == 0 else first + later * (chunk_index - 1)


def chunks_for_frames(frames: int, first: int, later: int) -> int:
    """Fewest chunks that give at least `frames` video frames (at least one chunk)."""
    return 1 + max(0, math.ceil((frames - first) / later))


def chunk_at_time(seconds: float, fps: float, first: int, later: int) -> int:
    """The chunk whose first video frame is nearest to `seconds` (ties go to the later chunk)."""
    frame = seconds * fps
    if frame < first / 2:
        return 0
    return max(1, 1 + math.floor((frame - first) / later + 0.5))


# ---------------------------------------------------------------------------------------------------
# Schedules


@dataclass(frozen=True)
class ScheduleEntry:
    prompt: str
    at: float          # seconds or chunk index, see `unit`
    unit: str          # "s" or "chunk"

    def chunk(self, fps: float, chunk_frames: int, counts: tuple[int, int] | None = None) -> int:
        """Chunk index of this entry; `counts`: (first, later) video frames per chunk, default the Wan VAE's."""
        if self.unit != "s":
            return int(self.at)
        return chunk_at_time(self.at, fps, *(counts or chunk_frame_counts(chunk_frames)))


def parse_schedule(text: str) -> list[ScheduleEntry]:
    """Parse schedule text (see the module docstring) into entries, in the order written."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ScheduleError(f"prompt schedule line {number} {quote(line.strip())}: expected '<seconds>s: prompt' "
                                "(e.g. '4.5s: a dog runs') or 'chunk <index>: prompt' (e.g. 'chunk 3: a dog runs')")
        if not match["prompt"]:
            raise ScheduleError(f"prompt schedule line {number} {quote(line.strip())}: the prompt after ':' is empty")
        if match["sec"] is not None:
            entries.append(ScheduleEntry(match["prompt"], float(match["sec"]), "s"))
        else:
            entries.append(ScheduleEntry(match["prompt"], float(match["chunk"]), "chunk"))
    if not entries:
        raise ScheduleError("the prompt schedule is empty; write one line per switch, e.g. '0s: a cat'")
    return entries


def schedule_switches(entries: list[ScheduleEntry], embeddings: dict[str, torch.Tensor],
                      base_context: torch.Tensor, fps: float, chunk_frames: int, first_chunk: int = 0,
                      blend_chunks: int = 0, recache: bool = False,
                      counts: tuple[int, int] | None = None) -> dict[int, PromptSwitch]:
    """Prompt switches keyed by absolute chunk index, for `StreamingPipeline.stream(prompts=...)`.

    Entry times count from `first_chunk` (the chunk the current run starts at). `embeddings` maps each
    prompt to its context `[B, L, D]`; `base_context` is the prompt in effect before the first entry.
    With `blend_chunks = k > 1` a switch is spread over k chunks, the context moving linearly from the
    previous prompt to the new one (the last of them is the new prompt exactly); `recache` re-encodes
    the cache under the new prompt at the last of them. A later entry overrides overlapping blends.
    `counts`: (first, later) video frames per chunk of the decoder in use (default: the Wan VAE's).
    """
    timed = sorted(((e.chunk(fps, chunk_frames, counts), i, e) for i, e in enumerate(entries)), key=lambda x: x[:2])
    switches: dict[int, PromptSwitch] = {}
    previous = base_context
    steps = max(1, blend_chunks)
    for chunk, _, entry in timed:
        target = embeddings[entry.prompt]
        if target.shape != previous.shape:
            raise ScheduleError(f"prompt {quote(entry.prompt)} has an embedding of shape {tuple(target.shape)}, the "
                                f"stream's is {tuple(previous.shape)}; encode every prompt with the same encoder")
        for j in range(steps):
            weight = (j + 1) / steps
            context = target if weight == 1.0 else torch.lerp(previous.float(), target.float(), weight).to(target.dtype)
            switches[first_chunk + chunk + j] = PromptSwitch(context, recache and j == steps - 1)
        previous = target
    return switches
