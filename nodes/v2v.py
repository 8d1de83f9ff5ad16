"""SF Video To Video: restyle input frames chunk by chunk (sf_core.v2v), streamed live like the sampler.

The input is a VIDEO (core 'Load Video': decoded from its file a chunk at a time, so a 10-minute input never
sits in memory; its frame rate is used) or an IMAGE batch. Its frames are cut into the decoder's chunks
(Wan VAE: 9, then 12 frames), encoded with the streaming encoder that shares the VAE's weights, noised to
`strength` and denoised with the KV cache. The output has exactly the input's frame count: a trailing
partial chunk is padded with its last frame and the padding dropped.
"""
from __future__ import annotations

from typing import Iterator

import torch

from sf_core.media.source import VideoSource, VideoSourceError
from sf_core.media.timing import chunks_for_frames
from sf_core.pipeline import StreamingPipeline
from sf_core.v2v import VideoToVideo, check_strength
from sf_core.vae.encoders import encoder_for

from .handles import CONTEXT_TYPE, SCHEDULE_TYPE, SFStream
from .native import MODEL_INPUT, VAE_INPUT, as_sf_model, as_sf_vae
from .run import KEEP_CHOICES, KEEP_FRAMES, Keep, StreamRun, make_room
from .speed import DEFAULT as DEFAULT_SPEED, speed_input, stream_forward
from .stream import (MAX_FPS, _LiveStream, _output_inputs, _record_inputs, resolve_schedule, setting_inputs,
                     setting_problems, stream_config_for)
from .validation import first_problem, range_problem


class V2VRun(StreamRun):
    """A stream run whose chunks come from batches of input frames `[B, T, 3, H, W]` in [-1, 1] (`total` in all)."""

    def __init__(self, stream: SFStream, batches: Iterator[torch.Tensor], total: int, strength: float, *args,
                 **kwargs):
        counts = stream.vae.frame_counts(stream.config.chunk_frames)
        super().__init__(stream, chunks_for_frames(total, *counts), *args, **kwargs)
        try:
            encoder = encoder_for(self.decoder)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"{stream.vae.name!r} cannot encode the input video: {error}") from None
        self.v2v = VideoToVideo(self.pipeline, stream.state, encoder, strength)
        self.batches, self.ready = batches, []

    def _next_chunk(self, made: int, check) -> tuple:
        while not self.ready:
            batch = next(self.batches, None)
            self.ready = self.v2v.push(batch, check) if batch is not None else self.v2v.finish(check)
        out = self.ready.pop(0)
        return out.chunk, self._decode(out.chunk.latents)[:, :out.frames]


def input_frames(images, video, multiple: int, batch: int, later: int):
    """(batches of frames [B, T, 3, H, W] in [-1, 1], frame count, (H, W), the video's fps or None). A file-backed
    VIDEO is decoded a batch at a time, resized down to multiples of `multiple`; IMAGE and other VIDEOs as a batch."""
    source = getattr(video, "get_stream_source", lambda: None)() if video is not None else None
    if source is not None:
        try:
            probe = VideoSource.probe(source)
        except VideoSourceError as error:
            raise ValueError(f"the input video {error}") from None
        size = tuple(max(multiple, n // multiple * multiple) for n in (probe.height, probe.width))
        batches = (b.expand(batch, -1, -1, -1, -1) for b in probe.batches(later, size=size))
        return batches, probe.frames, size, probe.fps
    if images is None and video is None:
        raise ValueError("connect the input video: 'video' (core Load Video) or 'images' (an IMAGE batch)")
    images = video.get_components().images if images is None else images
    frames = (images[..., :3].movedim(-1, 1) * 2 - 1).unsqueeze(0).expand(batch, -1, -1, -1, -1)  # [B, T, 3, H, W]
    return iter(frames.split(later, dim=1)), frames.shape[1], tuple(frames.shape[-2:]), None


class SFVideoToVideo(_LiveStream):
    DESCRIPTION = ("Restyles a video chunk by chunk with the causal model, streaming each decoded chunk to the preview "
                   "on this node (Stop and live prompt switches work as on the sampler). strength is the noise level "
                   "the input is taken to: each chunk starts at the first denoising step at or below it (0 = the "
                   "input's reconstruction, 1 = text to video). The output has the input's frame count and size.")
    FUNCTION = "restyle"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sf_model": (MODEL_INPUT,),
                "sf_context": (CONTEXT_TYPE,),
                "sf_vae": (VAE_INPUT, {"tooltip": "Needs an encoder: the full Wan2.1 VAE, TAEHV with encoder "
                                                  "weights, or the embedded model's pixels."}),
                "strength": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 1.0, "step": 0.01,
                                       "tooltip": "Released 4-step schedule: σ 1, 0.9375, 0.833, 0.625 — 0.9 runs "
                                                  "2 steps, 0.7 one, below 0.625 none (reconstruction)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 63 - 1}),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": MAX_FPS, "step": 1.0}),
                **setting_inputs(),
                **_record_inputs(),
            },
            "optional": {
                "video": ("VIDEO", {"tooltip": "The input video (core 'Load Video'): read from its file a chunk at a "
                                               "time and resized down to multiples of 16; its frame rate replaces fps."}),
                "images": ("IMAGE", {"tooltip": "Or the input as frames (e.g. another stream's images); width and "
                                                "height must be multiples of 16 (Wan)."}),
                "schedule": (SCHEDULE_TYPE, {"tooltip": "Prompt switches from 'SF Prompt Schedule'."}),
                **_output_inputs(),
                **speed_input(),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, strength=None, fps=None, chunk_frames=None, steps=None, cache_window=None,
                        cache_sink=None):
        return first_problem(range_problem("strength", strength, 0.0, 1.0), range_problem("fps", fps, 1.0, MAX_FPS),
                             *setting_problems(chunk_frames, steps, cache_window, cache_sink))

    def restyle(self, sf_model, sf_context, sf_vae, strength, seed, fps, chunk_frames, steps, cache_window,
                cache_sink, record, filename_prefix, live_recache, video=None, images=None, schedule=None,
                outputs=KEEP_CHOICES[0], output_frames=KEEP_FRAMES, speed=DEFAULT_SPEED, unique_id=None):
        sf_model, sf_vae = as_sf_model(sf_model), as_sf_vae(sf_vae)
        check_strength(strength)
        config = stream_config_for(sf_model.stream_config, chunk_frames, steps, cache_window, cache_sink)
        sf_vae.check_model(sf_model.model)
        counts = sf_vae.frame_counts(config.chunk_frames)
        batch = sf_context.embedding.shape[0]
        batches, total, (height, width), video_fps = input_frames(images, video, 2 * sf_vae.spatial_stride, batch,
                                                                   counts[1])
        fps = video_fps or fps
        if total < counts[0]:
            raise ValueError(f"the input has {total} frame(s); video-to-video needs at least {counts[0]} "
                             f"(one chunk of {config.chunk_frames} latent frames)")
        speed = speed or DEFAULT_SPEED
        pipeline = StreamingPipeline(stream_forward(sf_model, speed), config, sf_model.device, sf_model.dtype,
                                     sf_vae.spatial_stride)
        num_chunks = chunks_for_frames(total, *counts)
        frames = num_chunks * config.chunk_frames
        room = make_room(sf_model, sf_vae, config, pipeline.latent_size(height, width),
                         frames if config.window == -1 else config.window, batch)
        state = pipeline.start(sf_context.embedding, height, width, seed=seed, max_frames=frames)
        stream = SFStream(state, sf_model, sf_vae, sf_context, config, fps, info={"speed": speed})
        switches = resolve_schedule(schedule, sf_context.embedding, fps, config, counts, first_chunk=0)
        return V2VRun(stream, batches, total, strength, unique_id, record, filename_prefix, switches, live_recache,
                      Keep(outputs, output_frames), room).run()


NODE_CLASS_MAPPINGS = {"SFVideoToVideo": SFVideoToVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"SFVideoToVideo": "SF Video To Video"}
