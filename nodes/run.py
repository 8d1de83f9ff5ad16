"""One run of a stream node (sampler or extend), in host memory that does not grow with the stream.

One chunk at a time: (scheduled / live prompt switch) → denoise (interrupt checked after every step) →
decode with the persistent streaming decoder → record to the output folder → live preview event →
progress. A graceful stop (/sf/stop) ends after the current chunk and returns everything made so far.

The recording is the primary sink (written chunk by chunk). The LATENT / IMAGE outputs carry what
`Keep` says — by default the last 81 frames — so a 10-minute stream holds no more frames in memory
than a 10-second one.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from sf_core.media.recording import VideoRecorder, channels_last, to_uint8_frames
from sf_core.numerics import check_finite, weights_of
from sf_core.media.tail import Tail
from sf_core.pipeline import PromptSwitch, StreamingPipeline
from sf_core.speed.settings import accelerate
from sf_core.text.limits import quote

from .speed import node_speed, stream_level
from . import live, memory
from .handles import SFStream, decoder_state, store_decoder_state
from .video import native_video, recording_ui

KEEP_LAST, KEEP_ALL, KEEP_NONE = "last frames", "all", "none"
KEEP_CHOICES = [KEEP_LAST, KEEP_ALL, KEEP_NONE]
KEEP_FRAMES = 81          # the clip length Self Forcing was trained on
TRAINED_LATENT_FRAMES = 21  # ... in latent frames: a global cache past it attends beyond the training length


@dataclass(frozen=True)
class Keep:
    """What the LATENT / IMAGE outputs carry: the last `frames` video frames, everything, or nothing."""
    mode: str = KEEP_LAST
    frames: int = KEEP_FRAMES

    def __post_init__(self):
        if self.mode not in KEEP_CHOICES:
            raise ValueError(f"outputs must be one of {KEEP_CHOICES}, got {self.mode!r}")
        if self.mode == KEEP_LAST and self.frames < 1:
            raise ValueError(f"output_frames must be at least 1 to keep the last frames, got {self.frames}")

    def tails(self, frames_per_chunk: int, chunk_frames: int) -> tuple[Tail, Tail]:
        """(frames [B, T, ...] along dim 1, latents [B, F, ...] along dim 1) buffers for this choice."""
        if self.mode != KEEP_LAST:
            limit = None if self.mode == KEEP_ALL else 0
            return Tail(limit, dim=1), Tail(limit, dim=1)
        latents = -(-self.frames * chunk_frames // frames_per_chunk)  # the latents those frames decode from
        return Tail(self.frames, dim=1), Tail(latents, dim=1)

    def describe(self) -> str:
        return {KEEP_LAST: f"the last {self.frames} frames", KEEP_ALL: "every frame", KEEP_NONE: "no frames"}[self.mode]


def output_path(prefix: str, record: str, width: int, height: int) -> str | None:
    if record == "none":
        return None
    import folder_paths

    folder, name, counter, _, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory(),
                                                                    width, height)
    return os.path.join(folder, f"{name}_{counter:05}" + (".mp4" if record == "mp4" else ""))


def _recorder(path: str | None, record: str, fps: float) -> VideoRecorder | None:
    if path is None:
        return None
    return VideoRecorder(path, fps) if record == "mp4" else VideoRecorder(None, fps, png_dir=path)


def trained_length_warning(stream: SFStream) -> str | None:
    """A report line when a global cache holds more frames than the checkpoint was trained on."""
    cache = stream.state.cache
    if cache.rolling or cache.frames_held <= TRAINED_LATENT_FRAMES:
        return None
    return (f"warning: the global KV cache holds {cache.frames_held} latent frames, past the "
            f"{TRAINED_LATENT_FRAMES} ({KEEP_FRAMES} video frames) Self Forcing was trained on: every chunk attends "
            "to all of them (memory grows, quality drifts); set cache_window (e.g. 21, sink 3) for long streams")


class StreamRun:
    """Advances a stream (whose state this run owns) chunk by chunk; `run()` → the node's result."""

    def __init__(self, stream: SFStream, num_chunks: int, node_id, record: str, filename_prefix: str,
                 switches: dict[int, PromptSwitch] | None, live_recache: bool, keep: Keep, memory_note: str = ""):
        import comfy.utils

        self.stream, self.num_chunks, self.node = stream, num_chunks, str(node_id)
        self.switches, self.live_recache, self.keep = switches or {}, live_recache, keep
        model, state, vae = stream.model, stream.state, stream.vae
        self.speed = node_speed(stream_level(stream), model)
        self.pipeline = StreamingPipeline(accelerate(model.model, self.speed), stream.config, model.device,
                                          model.dtype, vae.spatial_stride)
        self.decoder = vae.fresh_decoder(decoder_state(state.extras))
        self.height, self.width = vae.spatial_stride * state.latent_height, vae.spatial_stride * state.latent_width
        self.record, self.path = record, output_path(filename_prefix, record, self.width, self.height)
        self.recorder = _recorder(self.path, record, stream.fps)
        self.progress = comfy.utils.ProgressBar(num_chunks, node_id=node_id)
        self.frames, self.latents = keep.tails(vae.frame_counts(stream.config.chunk_frames)[1],
                                               stream.config.chunk_frames)
        self.made, self.latency_ms, self.notes, self.memory_note = 0, 0.0, [], memory_note
        self.lead: torch.Tensor | None = None

    def run(self, start_latents: torch.Tensor | None = None) -> dict:
        if start_latents is not None:  # the start image passes through the decoder first (its causal cache)
            self.lead = self.decoder.decode_chunk(start_latents.to(self.stream.model.device))
        reason = "interrupted"
        live.MAILBOX.begin(self.node, kind="stream", chunks=self.num_chunks,
                           chunk_index=self.stream.state.chunk_index)
        try:
            reason = self._loop()
        finally:
            if self.recorder is not None:
                self.recorder.close()
            live.send_stream_done(self.node, self.made, self.stream.frames, reason)
            live.MAILBOX.end(self.node)
        store_decoder_state(self.stream.state.extras, self.decoder)
        return self._result(reason)

    def _loop(self) -> str:
        import comfy.model_management as mm

        check = lambda step, steps: mm.throw_exception_if_processing_interrupted()  # noqa: E731
        for made in range(self.num_chunks):
            mm.throw_exception_if_processing_interrupted()
            if made and live.MAILBOX.stop_requested(self.node):
                return "stopped"
            self._switch_prompt()
            started = time.perf_counter()
            self._emit(*self._next_chunk(made, check), started)
        return "finished"

    def _next_chunk(self, made: int, check) -> tuple:
        """Denoise and decode chunk `made` of this run -> (chunk, frames [B, T, 3, H, W]); video to video
        (nodes/v2v.py) makes its chunks from input frames instead."""
        chunk = self.pipeline.step(self.stream.state, callback=check)
        return chunk, self._decode(chunk.latents)

    def _switch_prompt(self) -> None:
        state = self.stream.state
        switch = self.switches.get(state.chunk_index)
        if switch is not None:
            self.pipeline.switch_prompt(state, switch.context, switch.recache)
        if (text := live.MAILBOX.take_prompt(self.node)) is not None:
            context = self.stream.context.encode_prompt(text)
            memory.load([self.stream.model.patcher, self.stream.vae.patcher])  # the encoder may have evicted them
            self.pipeline.switch_prompt(state, context, self.live_recache)
            self.notes.append(f"chunk {state.chunk_index}: {quote(text)}")

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        decoded = self.decoder.decode_chunk(latents)  # [B, T, 3, H, W] in [-1, 1]
        if self.lead is not None:
            decoded, self.lead = torch.cat([self.lead.to(decoded), decoded], dim=1), None
        return decoded

    def _emit(self, chunk, decoded: torch.Tensor, started: float) -> None:
        """Record, preview and keep (as far as asked) one decoded chunk."""
        model, vae = self.stream.model, self.stream.vae
        check_finite(f"chunk {chunk.index}", chunk.latents, {f"the model {model.name}": model.model}, model.dtype)
        check_finite(f"decoded chunk {chunk.index}", decoded, {f"the VAE {vae.name}": weights_of(self.decoder)},
                     model.dtype)  # a NaN chunk stops the run; the recording keeps the chunks before it
        latency = (time.perf_counter() - started) * 1000
        self.made += 1
        self.latency_ms += latency
        self.stream.frames += decoded.shape[1]
        pixels = to_uint8_frames(channels_last(decoded[0]))
        if self.recorder is not None:
            self.recorder.write(pixels)
        self.latents.append(chunk.latents.float().cpu())
        self.frames.append(((decoded.float().cpu().permute(0, 1, 3, 4, 2) + 1) / 2).clamp(0, 1))  # [B, T, H, W, 3]
        live.send_chunk_preview(self.node, chunk.index, pixels, self.stream.fps, latency,
                                cache_frames=self.stream.state.cache.frames_held, total_frames=self.stream.frames)
        live.MAILBOX.update(self.node, chunk_index=chunk.index)
        self.progress.update(1)

    def _result(self, reason: str) -> dict:
        stream = self.stream
        raw = stream.vae.to_comfy_latent(self.latents.result())  # [B, C, F, h, w]
        images = self.frames.result().flatten(0, 1)               # [B·T, H, W, 3]
        report = (f"{reason}: {self.made}/{self.num_chunks} chunks, {self.frames.seen} frames {self.width}×"
                  f"{self.height} at {stream.fps:g} fps (stream total {stream.frames} frames, next chunk "
                  f"{stream.state.chunk_index}); mean chunk latency {self.latency_ms / max(self.made, 1):.0f} ms; "
                  f"KV cache holds {stream.state.cache.frames_held} latent frames")
        lines = [report, f"outputs: {self.keep.describe()} ({images.shape[0]} frames in IMAGE)",
                 f"speed: {self.speed.describe()}"]
        lines += [f"memory: {self.memory_note}"] if self.memory_note else []
        lines += [f"text: {stream.context.note}"] if stream.context.note else []
        lines += [warning] if (warning := trained_length_warning(stream)) else []
        lines += [f"recording: {self.path}"] if self.path else []
        lines += ["live prompt switches: " + "; ".join(self.notes)] if self.notes else []
        text = "\n".join(lines)
        return {"ui": {"text": [text], **recording_ui(self.path, self.record)},
                "result": ({"samples": raw}, images, stream, text,
                           native_video(self.path, self.record, images, stream.fps))}


def make_room(stream_model, vae, config, latent_hw: tuple[int, int], capacity: int, batch: int = 1) -> str:
    """Load the stream's models through ComfyUI's memory manager, freeing what the KV cache (of `capacity`
    latent frames), the decoder state and the activation peak need; returns a line for the report."""
    need = memory.stream_bytes(stream_model.model, config, vae.decoder, latent_hw, capacity, batch)
    memory.load([stream_model.patcher, vae.patcher], need["total"])
    return memory.describe(need)


def run_stream(stream: SFStream, num_chunks: int, node_id, record: str, filename_prefix: str,
               switches: dict[int, PromptSwitch] | None = None, live_recache: bool = False,
               start_latents: torch.Tensor | None = None, keep: Keep = Keep(), memory_note: str = ""):
    """Advance `stream` (whose state this call owns) by up to `num_chunks` chunks -> node outputs."""
    return StreamRun(stream, num_chunks, node_id, record, filename_prefix, switches, live_recache, keep,
                     memory_note).run(start_latents)
