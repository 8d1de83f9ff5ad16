"""The stream sampler, the extend node, prompt schedules and the image-to-video start.

The nodes resolve their inputs into a stream and hand it to `nodes/run.py`, which advances it chunk by
chunk (denoise, decode, record, live preview) in bounded host memory.
"""
from __future__ import annotations

import dataclasses

from sf_core.pipeline import PromptSwitch, StreamingPipeline
from sf_core.media.timing import chunks_for_frames, parse_schedule, schedule_switches

from . import live, memory
from .run import KEEP_CHOICES, KEEP_FRAMES, Keep, make_room, run_stream
from .speed import DEFAULT as DEFAULT_SPEED, INHERIT, LEVELS, extend_speed_input, speed_input, stream_forward
from .categories import CONDITIONING
from .choices import CACHE_SINK, CACHE_WINDOW, CHECKPOINT, CHUNK_FRAMES, GLOBAL, STEPS
from .native import MODEL_INPUT, VAE_INPUT, as_sf_model, as_sf_vae
from .validation import (LENGTH_UNITS, choice_problem, first_problem, legacy_combo_problem, length_problem,
                         range_problem, requested_amount, size_problem)
from .handles import (CATEGORY, CONTEXT_TYPE, SCHEDULE_TYPE, START_TYPE, STREAM_TYPE,
                      SFSchedule, SFStart, SFStream)

RECORD_CHOICES = ["mp4", "png", "none"]
MAX_LENGTH = 100000.0
MAX_FPS = 120.0
OUTPUTS = ("LATENT", "IMAGE", STREAM_TYPE, "STRING", "VIDEO")  # new outputs go last: saved graphs link by index
OUTPUT_NAMES = ("latent", "images", "sf_stream", "report", "video")


def stream_config_for(base, chunk_frames, steps, cache_window, cache_sink):
    """The checkpoint's stream config with the sampler's choices ("checkpoint" keeps the file's value; the legacy
    INT widget values 0 / -1 mean the same, see nodes/choices.py)."""
    chunk_frames, steps = CHUNK_FRAMES.parse(chunk_frames), STEPS.parse(steps)
    cache_window, cache_sink = CACHE_WINDOW.parse(cache_window), CACHE_SINK.parse(cache_sink)
    changes = {}
    if chunk_frames != CHECKPOINT:
        changes["chunk_frames"] = chunk_frames
    if steps != CHECKPOINT:
        changes["denoising_steps"] = tuple(1000.0 * (steps - i) / steps for i in range(steps))
    if cache_window == GLOBAL:
        changes.update(window=-1, sink=0)
    elif cache_window != CHECKPOINT:
        changes["window"] = cache_window
    if cache_sink != CHECKPOINT:
        changes["sink"] = cache_sink
    config = dataclasses.replace(base, **changes)
    if config.window != -1 and config.chunk_frames > config.window - config.sink:
        raise ValueError(f"a chunk of {config.chunk_frames} latent frames does not fit a rolling cache window of "
                         f"{config.window} frames with {config.sink} sink frames; use a window of at least "
                         f"{config.chunk_frames + config.sink}")
    if config.window == -1 and config.sink:
        raise ValueError("a cache sink needs a rolling window: set cache_window to a number or cache_sink to 0")
    return config


def setting_inputs() -> dict:
    """The chunk size, steps and KV-cache menus of the nodes that start a stream (sampler, video to video)."""
    return {"chunk_frames": CHUNK_FRAMES.widget(), "steps": STEPS.widget(), "cache_window": CACHE_WINDOW.widget(),
            "cache_sink": CACHE_SINK.widget()}


def setting_problems(chunk_frames, steps, cache_window, cache_sink) -> tuple:
    return tuple(choice_problem(c, v) for c, v in ((CHUNK_FRAMES, chunk_frames), (STEPS, steps),
                                                    (CACHE_WINDOW, cache_window), (CACHE_SINK, cache_sink)))


def _output_inputs():
    """Optional (graphs saved before them keep working): what the LATENT / IMAGE outputs carry."""
    return {
        "outputs": (KEEP_CHOICES, {"default": KEEP_CHOICES[0], "tooltip": "What the latent / images outputs carry "
                                   "(the recording always has every frame): the last output_frames frames (memory "
                                   "stays bounded however long the stream), all frames (host memory grows with the "
                                   "length: about 4.8 MB per 832×480 frame), or none."}),
        "output_frames": ("INT", {"default": KEEP_FRAMES, "min": 1, "max": 1000000,
                                  "tooltip": "How many of the last video frames the outputs carry with 'last frames'."}),
    }


def _record_inputs():
    return {
        "record": (RECORD_CHOICES, {"tooltip": "Write every chunk to the output folder as it is decoded, so an "
                                                "interrupted or stopped run keeps its frames. mp4 (H.264, "
                                                "fragmented) or a PNG sequence."}),
        "filename_prefix": ("STRING", {"default": "self_forcing/stream"}),
        "live_recache": ("BOOLEAN", {"default": True, "tooltip": "When a prompt is switched live from the preview "
                                                                   "widget, re-encode the cached frames under the "
                                                                   "new prompt (faster reaction, small jump)."}),
    }


class _LiveStream:
    """What the sampler and extend nodes share: stream outputs, live preview, cached unless steered live."""
    CATEGORY = CATEGORY
    RETURN_TYPES = OUTPUTS
    RETURN_NAMES = OUTPUT_NAMES
    OUTPUT_NODE = True
    SF_LIVE_PREVIEW = True

    @classmethod
    def IS_CHANGED(cls, unique_id=None, **kwargs):
        """Cached like any node (same inputs, same seed: same video) unless the node's last run was steered live
        (Stop, a live prompt switch): those runs count, so the next queue runs it again."""
        return live.MAILBOX.steered_runs(unique_id)


class SFStreamSampler(_LiveStream):
    DESCRIPTION = ("Generates a video chunk by chunk with a causal (Self Forcing) model, streaming each decoded chunk "
                   "to the preview on this node. Stop (graceful) and live prompt switches work from the preview "
                   "widget; Cancel interrupts between denoising steps. Outputs the raw LATENT, the frames, and a "
                   "stream state that 'SF Stream Extend' continues exactly.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sf_model": (MODEL_INPUT, {"tooltip": "SF Model Loader, or a native Wan 2.1 MODEL (UNETLoader, "
                                                      "after LoRA nodes such as LoraLoaderModelOnly)."}),
                "sf_context": (CONTEXT_TYPE,),
                "sf_vae": (VAE_INPUT, {"tooltip": "SF VAE Loader, or a native Wan 2.1 VAE (VAELoader)."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16,
                                  "tooltip": "Multiple of 16. Self Forcing was trained at 832×480."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16}),
                "length": ("FLOAT", {"default": 5.0, "min": 0.0, "max": MAX_LENGTH, "step": 0.5,
                                     "tooltip": "How much to generate, in the unit below (rounded up to whole chunks)."}),
                "length_unit": (LENGTH_UNITS,),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 63 - 1}),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": MAX_FPS, "step": 1.0,
                                  "tooltip": "Playback rate of the preview and the recording (Wan2.1: 16)."}),
                **setting_inputs(),
                **_record_inputs(),
            },
            "optional": {
                "schedule": (SCHEDULE_TYPE, {"tooltip": "Prompt switches from 'SF Prompt Schedule'."}),
                "start": (START_TYPE, {"tooltip": "A start image from 'SF Image To Video Start'."}),
                **_output_inputs(),
                **speed_input(),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, length=None, length_unit=None, fps=None, chunk_frames=None,
                        steps=None, cache_window=None, cache_sink=None, outputs=None, speed=None):
        return first_problem(size_problem(width, height), range_problem("fps", fps, 1.0, MAX_FPS),
                             legacy_combo_problem("outputs", outputs, KEEP_CHOICES),
                             legacy_combo_problem("speed", speed, list(LEVELS)),
                             range_problem("length", length, 0.0, MAX_LENGTH), length_problem(length, length_unit, fps),
                             *setting_problems(chunk_frames, steps, cache_window, cache_sink))

    def sample(self, sf_model, sf_context, sf_vae, width, height, length, length_unit, seed, fps, chunk_frames,
               steps, cache_window, cache_sink, record, filename_prefix, live_recache, schedule=None, start=None,
               outputs=KEEP_CHOICES[0], output_frames=KEEP_FRAMES, speed=DEFAULT_SPEED, unique_id=None):
        sf_model, sf_vae = as_sf_model(sf_model), as_sf_vae(sf_vae)
        speed = speed or DEFAULT_SPEED  # '': a graph saved before the menu
        config = stream_config_for(sf_model.stream_config, chunk_frames, steps, cache_window, cache_sink)
        sf_vae.check_model(sf_model.model)
        initial = None
        if start is not None:
            if (start.height, start.width) != (height, width):
                raise ValueError(f"the start image was encoded at {start.width}×{start.height}, the sampler runs at "
                                 f"{width}×{height}; use the same size in both nodes")
            initial = start.latents
        start_frames = None if initial is None else 4 * initial.shape[1] - 3  # the start image's decoded frames
        counts = sf_vae.frame_counts(config.chunk_frames)
        num_chunks = _num_chunks(length, length_unit, fps, counts, start_frames)
        pipeline = StreamingPipeline(stream_forward(sf_model, speed), config, sf_model.device, sf_model.dtype,
                                     sf_vae.spatial_stride)
        keep = Keep(outputs or KEEP_CHOICES[0], output_frames)  # '': a graph saved before the menu
        frames = (0 if initial is None else initial.shape[1]) + num_chunks * config.chunk_frames
        room = make_room(sf_model, sf_vae, config, pipeline.latent_size(height, width),
                         frames if config.window == -1 else config.window, sf_context.embedding.shape[0])
        state = pipeline.start(sf_context.embedding, height, width, seed=seed, initial_latents=initial,
                               max_frames=frames)
        stream = SFStream(state, sf_model, sf_vae, sf_context, config, fps, info={"speed": speed})
        switches = resolve_schedule(schedule, sf_context.embedding, fps, config, counts, first_chunk=0)
        return run_stream(stream, num_chunks, unique_id, record, filename_prefix, switches, live_recache, initial,
                          keep, room)


def _num_chunks(length: float, unit: str, fps: float, counts: tuple[int, int], lead_frames: int | None) -> int:
    """Chunks needed for `length` seconds / video frames / chunks. `counts`: (first, later) video frames per
    chunk of the decoder in use (Wan: 4·n − 3, 4·n). `lead_frames`: video frames this run outputs before its
    first chunk (a start image; 0 for an extension); None for a fresh stream, whose very first chunk gives
    `first` frames. Every other chunk gives `later`."""
    if problem := length_problem(length, unit, fps):
        raise ValueError(problem)
    if unit == "chunks":
        return round(length)
    frames = requested_amount(length, unit, fps)
    first, later = counts
    if lead_frames is None:
        return chunks_for_frames(frames, first, later)
    return max(1, -(-(frames - lead_frames) // later))


def resolve_schedule(schedule: SFSchedule | None, base, fps, config, counts, first_chunk) -> dict[int, PromptSwitch]:
    if schedule is None:
        return {}
    return schedule_switches(schedule.entries, schedule.embeddings, base, fps, config.chunk_frames, first_chunk,
                             schedule.blend_chunks, schedule.recache, counts)


class SFStreamExtend(_LiveStream):
    DESCRIPTION = ("Continues a stream exactly where it ended (KV cache, VAE cache, noise, position): the same prompt "
                   "or a new one, optionally re-caching the recent frames under the new prompt. Chain as many as you "
                   "like; the input stream is never changed (its KV cache is shared copy-on-write, so continuing a "
                   "global cache copies nothing).")
    FUNCTION = "extend"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sf_stream": (STREAM_TYPE,),
                "length": ("FLOAT", {"default": 5.0, "min": 0.0, "max": MAX_LENGTH, "step": 0.5,
                                     "tooltip": "How much to add, in the unit below (rounded up to whole chunks, so "
                                                "the next extension continues exactly where this one ends)."}),
                "length_unit": (LENGTH_UNITS, {"default": "seconds"}),
                "recache": ("BOOLEAN", {"default": False, "tooltip": "With a new prompt: re-encode the cached frames "
                                                                      "under it, so the old prompt stops steering."}),
                **_record_inputs(),
            },
            "optional": {
                "sf_context": (CONTEXT_TYPE, {"tooltip": "New prompt; leave empty to keep the stream's prompt."}),
                "schedule": (SCHEDULE_TYPE, {"tooltip": "Prompt switches, timed from the start of this extension."}),
                **_output_inputs(),
                **extend_speed_input(),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, length=None, length_unit=None, outputs=None, speed=None):
        return first_problem(range_problem("length", length, 0.0, MAX_LENGTH), length_problem(length, length_unit),
                             legacy_combo_problem("outputs", outputs, KEEP_CHOICES),
                             legacy_combo_problem("speed", speed, [INHERIT, *LEVELS]))

    def extend(self, sf_stream, length, length_unit, recache, record, filename_prefix, live_recache,
               sf_context=None, schedule=None, outputs=KEEP_CHOICES[0], output_frames=KEEP_FRAMES, speed=INHERIT,
               unique_id=None):
        config = sf_stream.config
        counts = sf_stream.vae.frame_counts(config.chunk_frames)
        num_chunks = _num_chunks(length, length_unit, sf_stream.fps, counts, lead_frames=0)
        keep = Keep(outputs or KEEP_CHOICES[0], output_frames)  # '': a graph saved before the menu
        cache, base = sf_stream.state.cache, sf_stream.state
        frames = cache.frames_held + num_chunks * config.chunk_frames
        room = make_room(sf_stream.model, sf_stream.vae, config, (base.latent_height, base.latent_width),
                         cache.reserved_frames(frames), base.batch)
        stream = dataclasses.replace(sf_stream, state=base.fork(), info=dict(sf_stream.info))
        if speed and speed != INHERIT:
            stream.info["speed"] = speed
        state = stream.state
        state.cache.reserve(frames)
        switches = {}
        if sf_context is not None:
            stream.context = sf_context
            switches[state.chunk_index] = PromptSwitch(sf_context.embedding, recache)
        switches.update(resolve_schedule(schedule, stream.context.embedding, stream.fps, config, counts,
                                         state.chunk_index))
        return run_stream(stream, num_chunks, unique_id, record, filename_prefix, switches, live_recache,
                          keep=keep, memory_note=room)


class SFPromptSchedule:
    DESCRIPTION = ("Prompt switches at given times, one per line: '0s: a cat', '4.5s: a dog', or 'chunk 6: a bird'. "
                   "Connect to a stream sampler or extend node; times count from that node's first chunk.")
    CATEGORY = CONDITIONING
    FUNCTION = "build"
    RETURN_TYPES = (SCHEDULE_TYPE,)
    RETURN_NAMES = ("schedule",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sf_context": (CONTEXT_TYPE, {"tooltip": "Its text encoder encodes the scheduled prompts."}),
            "schedule": ("STRING", {"multiline": True, "default": "0s: a red fox trotting through fresh snow\n"
                                                                  "4s: the fox stops and looks at the camera"}),
            "blend_chunks": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "Spread each switch over this many "
                                     "chunks, moving the prompt embedding gradually (0 or 1: hard switch)."}),
            "recache": ("BOOLEAN", {"default": False, "tooltip": "Re-encode the cached frames under each new prompt."}),
        }}

    def build(self, sf_context, schedule, blend_chunks, recache):
        entries = parse_schedule(schedule)
        embeddings = {e.prompt: sf_context.encode_prompt(e.prompt) for e in entries}
        return (SFSchedule(entries, embeddings, blend_chunks, recache),)


class SFImageToVideoStart:
    DESCRIPTION = ("Starts a stream from an image: the image is encoded with the Wan2.1 VAE and pushed through the "
                   "model's KV cache before the first chunk (needs a full VAE, not a tiny decoder).")
    CATEGORY = CONDITIONING
    FUNCTION = "encode"
    RETURN_TYPES = (START_TYPE,)
    RETURN_NAMES = ("start",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sf_vae": (VAE_INPUT,),
            "image": ("IMAGE", {"tooltip": "The first frame; resized and centre-cropped to width × height."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16}),
            "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16}),
        }}

    def encode(self, sf_vae, image, width, height):
        import comfy.utils

        sf_vae = as_sf_vae(sf_vae)
        if sf_vae.encoder is None:
            raise ValueError(f"{sf_vae.name!r} cannot encode images (tiny decoder or decoder-only file); load the full "
                             "Wan2.1 VAE (wan_2.1_vae.safetensors) with 'SF VAE Loader' or use 'SF VAE From Native'")
        if width % 16 or height % 16:
            raise ValueError(f"width and height must be multiples of 16, got {width}×{height}")
        pixels = comfy.utils.common_upscale(image[:1, :, :, :3].movedim(-1, 1), width, height, "bilinear", "center")
        memory.load([sf_vae.patcher])
        param = next(sf_vae.encoder.parameters())
        frames = (pixels * 2 - 1).unsqueeze(1).to(param)  # [1, 1, 3, H, W] in [-1, 1]
        return (SFStart(sf_vae.encoder.encode_video(frames).float(), height, width),)


NODE_CLASS_MAPPINGS = {
    "SFStreamSampler": SFStreamSampler,
    "SFStreamExtend": SFStreamExtend,
    "SFPromptSchedule": SFPromptSchedule,
    "SFImageToVideoStart": SFImageToVideoStart,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SFStreamSampler": "SF Stream Sampler",
    "SFStreamExtend": "SF Stream Extend",
    "SFPromptSchedule": "SF Prompt Schedule",
    "SFImageToVideoStart": "SF Image To Video Start",
}
