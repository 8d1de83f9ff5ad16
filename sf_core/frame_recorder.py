"""Incremental recording of a frame stream: every chunk is on disk as soon as it is decoded.

`mp4`: H.264 in a fragmented MP4 (`frag_every_frame+empty_moov`; zero-latency x264, a keyframe per chunk), so the file stays
playable up to the last finished fragment even if the process dies before `close()`.
`png`: one numbered PNG per frame in a folder — nothing is ever lost.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

FORMATS = ("mp4", "png")


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """Frames `[T, 3, H, W]` in [-1, 1] → uint8 `[T, H, W, 3]`."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames [T, 3, H, W], got {tuple(frames.shape)}")
    pixels = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


class FrameRecorder:
    """Append uint8 frames `[T, H, W, 3]` to `path` (`.mp4` file, or a folder for `png`)."""

    def __init__(self, path: str | os.PathLike, fps: float, format: str = "mp4", crf: int = 18):
        if format not in FORMATS:
            raise ValueError(f"recording format must be one of {FORMATS}, got {format!r}")
        self.path, self.fps, self.format, self.crf = Path(path), float(fps), format, crf
        self.frames_written = 0
        self._container = self._stream = self._file = None
        if format == "png":
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _open_mp4(self, height: int, width: int) -> None:
        import av
        from fractions import Fraction

        if height % 2 or width % 2:
            raise ValueError(f"H.264 needs an even frame size, got {width}×{height}; record as 'png' instead")
        self._file = open(self.path, "wb")
        self._container = av.open(self._file, mode="w", format="mp4", buffer_size=4096,
                                  options={"movflags": "frag_every_frame+empty_moov+default_base_moof"})
        self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.options = {"crf": str(self.crf), "preset": "veryfast", "tune": "zerolatency"}

    def write(self, frames: np.ndarray) -> None:
        """Append frames and push them to disk (one fragment per call for mp4)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        if self.format == "png":
            from PIL import Image

            for frame in frames:
                Image.fromarray(frame).save(self.path / f"frame_{self.frames_written:06d}.png")
                self.frames_written += 1
            return
        import av

        if self._container is None:
            self._open_mp4(*frames.shape[1:3])
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if i == 0:
                video_frame.pict_type = av.video.frame.PictureType.I  # new fragment at each chunk
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)
            self.frames_written += 1
        self._file.flush()

    def close(self) -> None:
        """Flush the encoder and finish the file (safe to call twice)."""
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._file.close()
            self._container = self._stream = self._file = None

    def __enter__(self) -> "FrameRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
