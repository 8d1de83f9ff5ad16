"""`generate` options for video-to-video (`--input-video`, `--strength`) and LoRAs (`--lora FILE[:STRENGTH]`).

Resolved before anything large loads (the video is probed, each LoRA file checked to exist); applied after the
bundle loads: LoRAs are merged into the DiT (and the text encoder, when the file has such layers) before the
prompts are encoded, so they cost nothing per chunk.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sf_core.generate.checks import UsageError
from sf_core.media.source import VideoSource, VideoSourceError
from sf_core.media.timing import chunks_for_frames
from sf_core.pipeline import Chunk, PromptSwitch, StreamingPipeline
from sf_core.state import StreamState

DEFAULT_STRENGTH = 0.9   # σ 0.9 → the released schedule's third step (σ 0.833): two of four steps run


@dataclass(frozen=True)
class V2VInput:
    source: VideoSource
    strength: float
    frames: int              # input frames this run turns into output frames


def add_arguments(parser) -> None:
    g = parser.add_argument_group("video-to-video and LoRA")
    g.add_argument("--input-video", type=Path,
                   help="restyle this video chunk by chunk (size, fps and length default to the video's)")
    g.add_argument("--strength", type=float,
                   help=f"video-to-video noise level in [0, 1]: 0 returns the input's reconstruction, 1 is "
                        f"text-to-video (default {DEFAULT_STRENGTH}); runs the steps at or below it")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="apply a Wan2.1 LoRA (kohya / ComfyUI, diffusers / PEFT, or sf_core.train export --lora) "
                        "merged at STRENGTH (default 1.0). Repeatable")


def parse_lora(spec: str) -> tuple[Path, float]:
    """'style.safetensors:0.8' -> (Path, 0.8); a bare path -> strength 1 (also for paths with ':' in them)."""
    path, _, tail = spec.rpartition(":")
    try:
        strength = float(tail) if path else 1.0
    except ValueError:
        path, strength = spec, 1.0
    path = Path(path or spec)
    if not path.is_file():
        raise UsageError(f"--lora {spec}: file {path} not found (ComfyUI keeps LoRAs in models/loras)")
    if not math.isfinite(strength):
        raise UsageError(f"--lora {spec}: strength must be a finite number, got {tail}")
    return path, strength


def resolve_loras(args) -> list[tuple[Path, float]]:
    return [parse_lora(spec) for spec in args.lora]


def probe_input(args) -> VideoSource | None:
    """The probed `--input-video` (None without it); option clashes refused here, before any loading."""
    if args.input_video is None:
        if args.strength is not None:
            raise UsageError("--strength needs --input-video (it sets how much of the input video is kept)")
        return None
    if args.until_stopped or args.resume_state is not None:
        raise UsageError("--input-video runs as long as the video; it does not combine with --until-stopped "
                         "or --resume-state")
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise UsageError(f"--strength {args.strength}: must lie in [0, 1] (0 = the input's reconstruction, "
                         "1 = text-to-video)")
    try:
        return VideoSource.probe(args.input_video)
    except VideoSourceError as exc:
        raise UsageError(f"--input-video {exc}") from None


def source_defaults(source: VideoSource, defaults: dict, multiple: int, notes: list[str]) -> dict:
    """The model's defaults with the input video's frame rate and size (rounded down to a multiple of `multiple`)."""
    width, height = (max(multiple, n // multiple * multiple) for n in (source.width, source.height))
    if (width, height) != (source.width, source.height):
        notes.append(f"--input-video is {source.width}x{source.height}: resized to {width}x{height} (multiples of "
                     f"{multiple}); give --width/--height for another size")
    return {**defaults, "width": width, "height": height, "fps": source.fps}


def v2v_length(args, source: VideoSource, chunks: int, frame_limit: int | None,
               counts: tuple[int, int]) -> tuple[V2VInput, int, int]:
    """Output length = the input's, or less when --frames / --seconds / --chunks ask for less."""
    asked = args.chunks is not None or args.frames is not None or args.seconds is not None
    limit = (frame_limit or counts[0] + (chunks - 1) * counts[1]) if asked else source.frames
    frames = min(source.frames, limit)
    if frames < counts[0]:
        raise UsageError(f"--input-video {source.path}: {frames} frame(s) to use; video-to-video needs at least "
                         f"{counts[0]} (one chunk)")
    strength = DEFAULT_STRENGTH if args.strength is None else args.strength
    return V2VInput(source, strength, frames), chunks_for_frames(frames, *counts), frames


def describe(v2v: V2VInput | None, loras: list[tuple[Path, float]]) -> list[tuple[str, object]]:
    rows = [(f"lora {i}", f"{p} at {s}") for i, (p, s) in enumerate(loras)]
    if v2v is not None:
        s = v2v.source
        rows.insert(0, ("input video", f"{s.path} ({s.width}x{s.height}, {s.frames} frames at {s.fps:g} fps; "
                                       f"using {v2v.frames}), strength {v2v.strength}"))
    return rows


def apply_loras(bundle, loras: list[tuple[Path, float]]) -> None:
    """Merge every LoRA into the bundle's DiT (and umT5 when the file has text-encoder layers), reporting each."""
    if not loras:
        return
    from sf_core.lora import merge
    from sf_core.weights.lora import read_lora
    text_model = getattr(getattr(bundle.encode, "__self__", None), "model", None)   # a TextEncoder's umT5
    for path, strength in loras:
        try:
            lora = read_lora(path, bundle.model, text_model)
        except (ValueError, OSError) as exc:  # LoRAError / WeightsError name the file and the problem
            raise UsageError(f"--lora {exc}") from None
        merge(bundle.model, [(lora.layers, strength)], keep=False)
        if lora.text_layers:
            merge(text_model, [(lora.text_layers, strength)], keep=False)
        print(f"note: {lora.report()}, merged at strength {strength}", file=sys.stderr)


def check_stream_loras(state: StreamState, loras: list[tuple[Path, float]], resumed: Path | None) -> None:
    """Record the LoRAs (file name, strength) a fresh stream is made with; a resumed stream must use the same."""
    used = [[path.name, strength] for path, strength in loras]
    if resumed is None:
        state.info["loras"] = used
    elif state.info.get("loras", []) != used:
        made = ", ".join(f"{n}:{s:g}" for n, s in state.info.get("loras", [])) or "no LoRA"
        raise UsageError(f"--resume-state {resumed}: the stream was made with {made}; give the same --lora options "
                         "(the weights must be the ones it was made with)")


def v2v_chunks(v2v: V2VInput, pipe: StreamingPipeline, state: StreamState, decoder, height: int, width: int,
               prompts: dict[int, PromptSwitch]) -> Iterator[Chunk]:
    """The stream's chunks made from the input video (the last one padded; the caller trims to the frame limit).
    The encoder is checked here, before the first chunk."""
    from sf_core.v2v import VideoToVideo
    from sf_core.vae.encoders import encoder_for
    try:
        encoder = encoder_for(decoder)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"--input-video: {exc}") from None
    v2v_stream = VideoToVideo(pipe, state, encoder, v2v.strength, prompts)
    batches = v2v.source.batches(v2v_stream.counts[1], v2v.frames, (height, width), pipe.device)
    return (piece.chunk for piece in v2v_stream.stream(batches))
