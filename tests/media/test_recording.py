"""Incremental recorder: frames, size and fps survive the round trip; a killed writer leaves a playable prefix."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from sf_core.media.recording import VideoRecorder, channels_last, pick_codec, read_video, to_uint8_frames

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gradient_chunk(t0: int, n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Smooth moving gradients (easy for any codec): [n, h, w, 3] uint8."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 5 + 7 * t) % 256, (y * 7 + 3 * t) % 256, np.full_like(x, 40 + t)], -1)
              for t in range(t0, t0 + n)]
    return np.asarray(frames, dtype=np.uint8)


def test_chunks_round_trip_with_count_size_fps_and_pixels(tmp_path):
    chunks = [_gradient_chunk(0, 9), _gradient_chunk(9, 12), _gradient_chunk(21, 12)]
    with VideoRecorder(tmp_path / "v.mp4", fps=12, png_dir=tmp_path / "png") as rec:
        for c in chunks:
            assert rec.write(c) == c.shape[0]
    frames, fps = read_video(tmp_path / "v.mp4")
    expected = np.concatenate(chunks)
    assert frames.shape == expected.shape == (33, 32, 48, 3)
    assert fps == pytest.approx(12)
    assert np.abs(frames.astype(float) - expected).mean() < 12  # lossy codec, but the same pictures
    pngs = sorted(os.listdir(tmp_path / "png"))
    assert pngs[0] == "frame_000000.png" and len(pngs) == 33
    assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / pngs[20])), expected[20])  # PNG is lossless


def test_float_frames_map_minus_one_one_to_uint8():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 4, 1).expand(1, 1, 4, 3)
    assert to_uint8_frames(x)[0, 0, :, 0].tolist() == [0, 128, 255, 255]
    assert np.array_equal(to_uint8_frames(x.numpy()), to_uint8_frames(x))
    assert channels_last(torch.zeros(2, 3, 5, 7)).shape == (2, 5, 7, 3)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        to_uint8_frames(np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(TypeError, match="uint8 or float"):
        to_uint8_frames(np.zeros((1, 2, 2, 3), np.int32))


def test_odd_size_is_padded_and_size_changes_are_refused(tmp_path):
    with VideoRecorder(tmp_path / "odd.mp4", fps=16) as rec:
        rec.write(np.zeros((3, 15, 21, 3), np.uint8))
        with pytest.raises(ValueError, match="size changed"):
            rec.write(np.zeros((3, 16, 21, 3), np.uint8))
    frames, _ = read_video(tmp_path / "odd.mp4")
    assert frames.shape == (3, 16, 22, 3)


def test_codec_is_h264_when_available():
    assert pick_codec() in ("libx264", "mpeg4")


def test_killed_writer_leaves_every_written_chunk(tmp_path):
    """SIGKILL right after the third chunk: the first two chunks and the third (9 + 12 + 12 frames) are on
    disk and play — at most the very last frame, whose fragment the muxer closes on the next frame, is lost."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        import numpy as np
        from sf_core.media.recording import VideoRecorder
        rec = VideoRecorder({str(tmp_path / 'k.mp4')!r}, fps=16)
        for n in (9, 12, 12):
            rec.write(np.full((n, 32, 32, 3), 100, np.uint8))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9
    frames, fps = read_video(tmp_path / "k.mp4")
    assert frames.shape[1:] == (32, 32, 3) and 32 <= frames.shape[0] <= 33 and fps == pytest.approx(16)
