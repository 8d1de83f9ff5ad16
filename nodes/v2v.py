"""SF Video To Video: restyle input frames chunk by chunk (sf_core.v2v), streamed live like the sampler.

The input frames (an IMAGE batch; core 'Get Video Components' turns a VIDEO into one) are cut into the
decoder's chunks (Wan VAE: 9, then 12 frames), encoded with the streaming encoder that shares the VAE's
weights, noised to `strength` and denoised with the KV cache. The output has exactly the input's frame
count: a trailing partial chunk is padded with its last frame and the padding dropped.
"""
from __future__ import annotations

import torch

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
    """A stream run whose chunks come from input frames `[B, T, 3, H, W]` in [-1, 1] instead of pure noise."""

    def __init__(self, stream: SFStream, frames: torch.Tensor, strength: float, *args, **kwargs):
        counts = stream.vae.frame_counts(stream.config.chunk_frames)
        total = frames.shape[1]
        super().__init__(stream, chunks_for_frames(total, *counts), *args, **kwargs)
        try:
            encoder = encoder_for(self.decoder)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"{stream.vae.name!r} cannot encode the input video: {error}") from None
        self.v2v = VideoToVideo(self.pipeline, stream.state, encoder, strength)
        self.input = frames
        self.cuts = [0] + [min(total, counts[0] + counts[1] * i) for i in range(self.num_chunks)]

    def _next_chunk(self, made: int, check) -> tuple:
        piece = self.input[:, self.cuts[made]:self.cuts[made + 1]]
        (out,) = self.v2v.push(piece, check) or self.v2v.finish(check)   # exactly one chunk per piece
        return out.chunk, self._decode(out.chunk.latents)[:, :out.frames]


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
                "images": ("IMAGE", {"tooltip": "The input video's frames, e.g. from 'Get Video Components'. "
                                                "Width and height must be multiples of 16 (Wan)."}),
                "strength": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 1.0, "step": 0.01,
                                       "tooltip": "Released 4-step schedule: σ 1, 0.9375, 0.833, 0.625 — 0.9 runs "
                                                  "2 steps, 0.7 one, below 0.625 none (reconstruction)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 63 - 1}),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": MAX_FPS, "step": 1.0}),
                **setting_inputs(),
                **_record_inputs(),
            },
            "optional": {
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

    def restyle(self, sf_model, sf_context, sf_vae, images, strength, seed, fps, chunk_frames, steps, cache_window,
                cache_sink, record, filename_prefix, live_recache, schedule=None, outputs=KEEP_CHOICES[0],
                output_frames=KEEP_FRAMES, speed=DEFAULT_SPEED, unique_id=None):
        sf_model, sf_vae = as_sf_model(sf_model), as_sf_vae(sf_vae)
        check_strength(strength)
        config = stream_config_for(sf_model.stream_config, chunk_frames, steps, cache_window, cache_sink)
        sf_vae.check_model(sf_model.model)
        counts = sf_vae.frame_counts(config.chunk_frames)
        if images.shape[0] < counts[0]:
            raise ValueError(f"the input has {images.shape[0]} frame(s); video-to-video needs at least {counts[0]} "
                             f"(one chunk of {config.chunk_frames} latent frames)")
        height, width = images.shape[1:3]
        speed = speed or DEFAULT_SPEED
        pipeline = StreamingPipeline(stream_forward(sf_model, speed), config, sf_model.device, sf_model.dtype,
                                     sf_vae.spatial_stride)
        batch = sf_context.embedding.shape[0]
        num_chunks = chunks_for_frames(images.shape[0], *counts)
        frames = num_chunks * config.chunk_frames
        room = make_room(sf_model, sf_vae, config, pipeline.latent_size(height, width),
                         frames if config.window == -1 else config.window, batch)
        state = pipeline.start(sf_context.embedding, height, width, seed=seed, max_frames=frames)
        stream = SFStream(state, sf_model, sf_vae, sf_context, config, fps, info={"speed": speed})
        video = (images[..., :3].movedim(-1, 1) * 2 - 1).unsqueeze(0).expand(batch, -1, -1, -1, -1)  # [B, T, 3, H, W]
        switches = resolve_schedule(schedule, sf_context.embedding, fps, config, counts, first_chunk=0)
        return V2VRun(stream, video, strength, unique_id, record, filename_prefix, switches, live_recache,
                      Keep(outputs, output_frames), room).run()


NODE_CLASS_MAPPINGS = {"SFVideoToVideo": SFVideoToVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"SFVideoToVideo": "SF Video To Video"}
