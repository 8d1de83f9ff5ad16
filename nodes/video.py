"""ComfyUI's native video type for the stream nodes: a `VIDEO` output (SaveVideo, CreateVideo's peers, video
previews take it) and the recording listed in the node's UI outputs, as core's SaveVideo lists its file, so it
appears in the queue and assets panels."""
from __future__ import annotations

import os
from fractions import Fraction

import torch


def native_video(recording: str | None, record: str, images: torch.Tensor, fps: float):
    """The mp4 recording itself when there is one (read from disk on use: no frames held in memory), else a video
    of the IMAGE frames `[T, H, W, 3]` in 0..1."""
    from comfy_api.input_impl import VideoFromComponents, VideoFromFile
    from comfy_api.util import VideoComponents

    if record == "mp4" and recording:
        return VideoFromFile(recording)
    return VideoFromComponents(VideoComponents(images=images, frame_rate=Fraction(fps).limit_denominator(1001)))


def recording_ui(recording: str | None, record: str) -> dict:
    """UI entries for an mp4 recording under the output folder (none for PNG sequences or no recording)."""
    if record != "mp4" or not recording:
        return {}
    import folder_paths

    subfolder, filename = os.path.split(os.path.relpath(recording, folder_paths.get_output_directory()))
    return {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": (True,)}
