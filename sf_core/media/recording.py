"""Incremental mp4 (and PNG) recording of a frame stream, safe against interruption.

The mp4 is *fragmented* (`movflags=frag_every_frame+empty_moov+default_base_moof`, one fragment per
frame, `flush_packets`) and every `write` call starts with a keyframe. Consequences:

* `close()` (also on exceptions / Ctrl-C through the context manager) writes every frame;
* if the process is killed outright (SIGKILL, power loss) the file still plays and holds every frame
  written so far except at most the very last one (its fragment is closed by the next frame);
* if a write fails (disk full, quota), the mp4 is cut back to its last complete fragment and
  `OutputError` says how many frames it keeps; a PNG that failed leaves no temporary file behind.

Frames are `[T, H, W, 3]` uint8, or float in [-1, 1]. Odd sizes are padded by one edge pixel (yuv420p).
No ComfyUI import: the nodes can reuse this as is.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from sf_core.media.outputs import OutputError, reason

MOVFLAGS = "frag_every_frame+empty_moov+default_base_moof"  # every encoded frame reaches disk at once
CODEC_PREFERENCE = ("libx264", "mpeg4")


def pick_codec() -> str:
    """The best available encoder of this PyAV build: h264 (libx264) if present, else mpeg4."""
    for name in CODEC_PREFERENCE:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises different types for unknown codecs across versions
            continue
    raise RuntimeError(f"this PyAV build has none of the video encoders {CODEC_PREFERENCE}")


def to_uint8_frames(frames) -> np.ndarray:
    """`[T, H, W, 3]` uint8 / float in [-1, 1] (torch or numpy) → contiguous uint8 numpy `[T, H, W, 3]`."""
    if isinstance(frames, torch.Tensor):
        if frames.is_floating_point():
            frames = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        frames = frames.cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.floating):
            raise TypeError(f"frames must be uint8 or float in [-1, 1], got dtype {frames.dtype}")
        frames = np.round((np.clip(frames, -1, 1) + 1) * 127.5).astype(np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {tuple(frames.shape)}")
    return np.ascontiguousarray(frames)


def channels_last(frames: torch.Tensor) -> torch.Tensor:
    """Decoder output `[T, 3, H, W]` → `[T, H, W, 3]` (values unchanged)."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected decoder frames [T, 3, H, W], got {tuple(frames.shape)}")
    return frames.permute(0, 2, 3, 1)


class VideoRecorder:
    """Append frames to `path` (mp4) and optionally to `png_dir` as `frame_000000.png`, ...

    The container is opened on the first write (when the size is known). Use as a context manager or call
    `close()`; `frames_written` counts frames handed to the encoder. `first_index` numbers the first PNG
    (to continue a resumed stream).
    """

    def __init__(self, path: str | os.PathLike | None, fps: float = 16, png_dir: str | os.PathLike | None = None,
                 codec: str | None = None, crf: int = 18, first_index: int = 0):
        if path is None and png_dir is None:
            raise ValueError("VideoRecorder needs an mp4 path, a PNG folder, or both")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path) if path is not None else None
        self.png_dir = Path(png_dir) if png_dir is not None else None
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec = codec or pick_codec()
        self.crf = crf
        self.first_index = first_index
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (H, W) of the frames given
        self._container = None
        self._stream = None
        self._complete_bytes = 0  # mp4 size after the last complete write call
        self.failed = False
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.png_dir is not None:
            self.png_dir.mkdir(parents=True, exist_ok=True)

    # -- writing ---------------------------------------------------------------------------------------
    def write(self, frames) -> int:
        """Append `[T, H, W, 3]` frames as one fragment; returns how many were written."""
        frames = to_uint8_frames(frames)
        if self.failed:
            raise OutputError("this recorder stopped after a failed write")
        if frames.shape[0] == 0:
            return 0
        size = (int(frames.shape[1]), int(frames.shape[2]))
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise ValueError(f"frame size changed from {self.size} to {size} (H, W) within one video")
        if self.png_dir is not None:
            self._write_pngs(frames)
        if self.path is not None:
            try:
                self._encode(frames)
            except OSError as exc:
                raise self._cut_back("writing", exc) from None
            self._complete_bytes = os.path.getsize(self.path)
        self.frames_written += frames.shape[0]
        return frames.shape[0]

    def _open(self) -> None:
        h, w = self.size
        self._container = av.open(str(self.path), "w", format="mp4",
                                  options={"movflags": MOVFLAGS, "flush_packets": "1"})
        options = {"tune": "zerolatency", "preset": "veryfast", "crf": str(self.crf)} if self.codec == "libx264" else {}
        stream = self._container.add_stream(self.codec, rate=self.fps, options=options)
        stream.width, stream.height = w + w % 2, h + h % 2  # yuv420p needs even sizes
        stream.pix_fmt = "yuv420p"
        if self.codec != "libx264":
            stream.bit_rate = max(400_000, int(stream.width * stream.height * float(self.fps) * 0.4))
        self._stream = stream

    def _encode(self, frames: np.ndarray) -> None:
        if self._container is None:
            self._open()
        h, w = self.size
        if h % 2 or w % 2:
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = self.frames_written + i
            frame.time_base = 1 / self.fps
            if i == 0:  # a keyframe per write call: each call is its own fragment
                frame.pict_type = av.video.frame.PictureType.I
            for packet in self._stream.encode(frame):
                self._container.mux(packet)

    def _write_pngs(self, frames: np.ndarray) -> None:
        from PIL import Image
        for i, array in enumerate(frames):
            target = self.png_dir / f"frame_{self.first_index + self.frames_written + i:06d}.png"
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                Image.fromarray(array).save(tmp, format="PNG")
                os.replace(tmp, target)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                self.failed = True
                kept = self.frames_written + i
                raise OutputError(f"writing {target} failed ({reason(exc)}); {self.png_dir} keeps the {kept} "
                                  f"frame(s) before it") from None

    # -- closing ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the encoder and write the trailer. Safe to call twice."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            for packet in self._stream.encode(None):
                container.mux(packet)
            container.close()
        except OSError as exc:
            self._container = container
            raise self._cut_back("closing", exc) from None

    def _cut_back(self, doing: str, exc: OSError) -> OutputError:
        """After a failed mp4 write: drop the partial fragment, say how many frames the file keeps."""
        self.failed = True
        container, self._container = self._container, None
        try:
            container.close()
        except (OSError, av.error.FFmpegError):
            pass
        try:
            os.truncate(self.path, self._complete_bytes)
        except OSError:
            pass
        kept = count_frames(self.path)
        return OutputError(f"{doing} {self.path} failed ({reason(exc)}); it keeps the first {kept} frame(s), "
                           "which play")

    def __enter__(self) -> "VideoRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def count_frames(path: str | os.PathLike) -> int:
    """Complete video frames in an mp4 (demuxed, not decoded); 0 for an empty or unreadable file."""
    try:
        with av.open(str(path)) as container:
            return sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    except (OSError, av.error.FFmpegError, IndexError):
        return 0


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode an mp4 back to `[T, H, W, 3]` uint8 and its frame rate (tests, checks)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8), rate
    return np.stack(frames), rate
