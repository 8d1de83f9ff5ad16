"""Incremental recording: every written chunk is readable before the recorder is closed."""
import av
import numpy as np
import pytest
import torch
from PIL import Image

from sf_core.frame_recorder import FrameRecorder, to_uint8_frames


def _chunks():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, 32, 48, 3), dtype=np.uint8)
    return [np.repeat(base, n, axis=0) + np.arange(n, dtype=np.uint8)[:, None, None, None] for n in (9, 12, 12)]


def _count(path):
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_mp4_is_readable_while_recording_and_complete_after_close(tmp_path):
    path = tmp_path / "out" / "stream.mp4"
    recorder = FrameRecorder(path, fps=16)
    written = 0
    for chunk in _chunks():
        recorder.write(chunk)
        written += len(chunk)
        assert written - 1 <= _count(path) <= written  # at most the last frame's fragment is pending
    recorder.close()
    recorder.close()
    assert recorder.frames_written == _count(path) == 33
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, float(stream.average_rate)) == (48, 32, 16.0)


def test_png_sequence_is_lossless(tmp_path):
    chunks = _chunks()
    with FrameRecorder(tmp_path / "frames", fps=16, format="png") as recorder:
        for chunk in chunks:
            recorder.write(chunk)
    files = sorted((tmp_path / "frames").glob("frame_*.png"))
    assert len(files) == 33
    assert np.array_equal(np.asarray(Image.open(files[9])), chunks[1][0])


def test_bad_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="format"):
        FrameRecorder(tmp_path / "x", fps=16, format="gif")
    with pytest.raises(ValueError, match="uint8"):
        FrameRecorder(tmp_path / "x.mp4", fps=16).write(np.zeros((1, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="even"):
        FrameRecorder(tmp_path / "y.mp4", fps=16).write(np.zeros((1, 9, 8, 3), dtype=np.uint8))


def test_to_uint8_frames_maps_the_pixel_range():
    frames = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert to_uint8_frames(frames)[0, 0, :, 0].tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError):
        to_uint8_frames(torch.zeros(3, 4, 4))
