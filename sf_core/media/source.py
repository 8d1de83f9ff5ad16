"""Input video for video-to-video: probed up front (size, rate, length), then decoded a batch of frames at a time.

Only one batch is ever in memory, so a 10-minute 832×480 input costs a few frames of RAM, not 11 GB.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Iterator

import av
import numpy as np
import torch
import torch.nn.functional as F


class VideoSourceError(ValueError):
    """An input video cannot be read."""


def _open(path: str | io.BytesIO):
    if isinstance(path, io.BytesIO):
        path.seek(0)
    return av.open(path)


@dataclass(frozen=True)
class VideoSource:
    path: str | io.BytesIO      # a file, or a file's bytes (ComfyUI's VIDEO from an upload)
    width: int
    height: int
    fps: float
    frames: int

    @classmethod
    def probe(cls, path: str | os.PathLike | io.BytesIO) -> "VideoSource":
        """Open the file and decode its first frame; one-line error if that fails."""
        path = path if isinstance(path, io.BytesIO) else os.fspath(path)
        if not isinstance(path, io.BytesIO) and not os.path.isfile(path):
            raise VideoSourceError(f"{path}: no such file")
        try:
            with _open(path) as container:
                if not container.streams.video:
                    raise VideoSourceError(f"{path}: has no video stream")
                stream = container.streams.video[0]
                first = next(container.decode(stream), None)
                rate = float(stream.average_rate or stream.guessed_rate or 0)
                count = stream.frames
            if first is None:
                raise VideoSourceError(f"{path}: contains no decodable frame")
        except VideoSourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyAV raises many types for damaged or foreign files
            raise VideoSourceError(f"{path}: cannot read it as a video ({type(exc).__name__}: {exc})") from None
        if count <= 0:  # some containers do not store the count: decode once to count
            with _open(path) as container:
                count = sum(1 for _ in container.decode(container.streams.video[0]))
        return cls(path, first.width, first.height, rate or 16.0, count)

    def batches(self, batch_frames: int, limit: int | None = None, size: tuple[int, int] | None = None,
                device: str | torch.device = "cpu") -> Iterator[torch.Tensor]:
        """Frames `[1, T, 3, H, W]` in [-1, 1], at most `batch_frames` per batch and `limit` in all, resized to
        `size` (height, width) when given and different."""
        limit = self.frames if limit is None else min(limit, self.frames)
        buffer, sent = [], 0
        with _open(self.path) as container:
            for frame in container.decode(container.streams.video[0]):
                if sent + len(buffer) >= limit:
                    break
                buffer.append(frame.to_ndarray(format="rgb24"))
                if len(buffer) == batch_frames:
                    yield _tensor(buffer, size, device)
                    sent, buffer = sent + len(buffer), []
        if buffer:
            yield _tensor(buffer, size, device)


def _tensor(frames: list[np.ndarray], size, device) -> torch.Tensor:
    x = torch.from_numpy(np.stack(frames)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1  # [T, 3, H, W]
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
    return x[None]
