"""'SF Preview Test Pattern': streams a moving test pattern through the same live-preview and
live-control path as the real stream sampler — to check a setup (browser widget, websocket, stop,
prompt switch, interrupt) without any model files."""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import live
from .categories import UTILS


def render_pattern(first_frame: int, count: int, height: int, width: int, text: str) -> np.ndarray:
    """Frames `first_frame .. first_frame+count-1` of the pattern: uint8 `[count, H, W, 3]`.

    A rainbow gradient scrolling one column per pixel-width/64 per frame, a white bar sweeping left to
    right every 48 frames, and the current text plus the frame number.
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)  # [H, W]
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        frame_index = first_frame + i
        phase = 2 * np.pi * ((xs + ys * 0.5) / width + frame_index / 64.0)
        rgb = np.stack([np.sin(phase + shift) for shift in (0.0, 2.094, 4.189)], axis=-1)  # [H, W, 3]
        frame = ((rgb * 0.4 + 0.5) * 255).astype(np.uint8)
        bar = int((frame_index % 48) / 48 * width)
        frame[:, bar:bar + max(2, width // 32)] = 255
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, width, 26), fill=(0, 0, 0))
        draw.text((4, 2), text[:80], fill=(255, 255, 255))
        draw.text((4, 14), f"frame {frame_index}", fill=(255, 255, 0))
        frames[i] = np.asarray(image)
    return frames


def _interruptible_sleep(seconds: float, check_interrupt) -> None:
    deadline = time.perf_counter() + seconds
    while (left := deadline - time.perf_counter()) > 0:
        check_interrupt()
        time.sleep(min(left, 0.01))


class SFPreviewTestPattern:
    """Streams `chunks` chunks of a moving pattern to the live preview; honours Stop, Switch prompt and
    Cancel exactly like the stream sampler. `chunk_seconds` simulates the generation time per chunk."""

    CATEGORY = UTILS
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("frames", "report")
    OUTPUT_NODE = True
    SF_LIVE_PREVIEW = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"default": "test pattern", "tooltip": "Drawn on the frames; "
                                    "'Switch prompt' replaces it from the next chunk."}),
                "width": ("INT", {"default": 256, "min": 32, "max": 2048, "step": 16}),
                "height": ("INT", {"default": 256, "min": 32, "max": 2048, "step": 16}),
                "chunks": ("INT", {"default": 8, "min": 1, "max": 100000}),
                "frames_per_chunk": ("INT", {"default": 12, "min": 1, "max": 256}),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0}),
                "chunk_seconds": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 60.0, "step": 0.05,
                                            "tooltip": "Simulated generation time per chunk."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # output depends on live control, never serve it from the cache

    def run(self, text, width, height, chunks, frames_per_chunk, fps, chunk_seconds, unique_id=None):
        import comfy.model_management as mm
        import comfy.utils

        node_id = str(unique_id)
        progress = comfy.utils.ProgressBar(chunks, node_id=unique_id)
        produced, switches, latencies = [], [], []
        reason = "interrupted"
        live.MAILBOX.begin(node_id, kind="test_pattern", chunks=chunks, chunk_index=-1)
        try:
            for chunk_index in range(chunks):
                mm.throw_exception_if_processing_interrupted()
                if live.MAILBOX.stop_requested(node_id):
                    break
                if (new_text := live.MAILBOX.take_prompt(node_id)) is not None:
                    text = new_text
                    switches.append(f"chunk {chunk_index}: {new_text!r}")
                started = time.perf_counter()
                frames = render_pattern(chunk_index * frames_per_chunk, frames_per_chunk, height, width, text)
                _interruptible_sleep(chunk_seconds - (time.perf_counter() - started),
                                     mm.throw_exception_if_processing_interrupted)
                latencies.append((time.perf_counter() - started) * 1000)
                produced.append(frames)
                live.send_chunk_preview(node_id, chunk_index, frames, fps, latencies[-1], cache_frames=None,
                                        total_frames=len(produced) * frames_per_chunk)
                live.MAILBOX.update(node_id, chunk_index=chunk_index)
                progress.update(1)
            reason = "finished" if len(produced) == chunks else "stopped"
        finally:
            live.send_stream_done(node_id, len(produced), len(produced) * frames_per_chunk, reason)
            live.MAILBOX.end(node_id)

        images = torch.from_numpy(np.concatenate(produced)).float() / 255.0 if produced else \
            torch.zeros((1, height, width, 3))  # [N, H, W, 3]; ComfyUI IMAGE cannot be empty
        report = (f"{reason}: {len(produced)}/{chunks} chunks, {len(produced) * frames_per_chunk} frames"
                  f" at {fps:g} fps; mean chunk latency "
                  f"{(sum(latencies) / len(latencies)) if latencies else 0:.0f} ms")
        if switches:
            report += "\nprompt switches: " + "; ".join(switches)
        return {"ui": {"text": [report]}, "result": (images, report)}


NODE_CLASS_MAPPINGS = {"SFPreviewTestPattern": SFPreviewTestPattern}
NODE_DISPLAY_NAME_MAPPINGS = {"SFPreviewTestPattern": "SF Preview Test Pattern"}
