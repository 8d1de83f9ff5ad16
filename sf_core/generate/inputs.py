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
    g.add_argument("--lora-at", nargs=2, action="append", default=[], metavar=("WHEN", "FILE:STRENGTH"),
                   help="from WHEN on ('5s' or 'c4', as --prompt-at) FILE runs at STRENGTH; such LoRAs are applied "
                        "unmerged (strength changeable per chunk; starting at their --lora strength, else 0). "
                        "Repeatable")


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
    """--lora files with their strengths, then (strength 0) the --lora-at files not given with --lora."""
    loras = [parse_lora(spec) for spec in args.lora]
    for _, spec in args.lora_at:
        path = parse_lora(spec)[0]
        if path not in [p for p, _ in loras]:
            loras.append((path, 0.0))
    return loras


def resolve_lora_switches(args, loras: list[tuple[Path, float]], fps: float,
                          counts: tuple[int, int]) -> dict[int, dict[int, float]]:
    """{chunk of this run: {index into `loras`: new strength}} from --lora-at (empty: every LoRA merged)."""
    from sf_core.generate.cli import parse_when
    from sf_core.media.timing import chunk_at_time
    switches: dict[int, dict[int, float]] = {}
    for when, spec in args.lora_at:
        unit, value = parse_when(when)
        chunk = int(value) if unit == "c" else chunk_at_time(value, fps, *counts)
        path, strength = parse_lora(spec)
        switches.setdefault(chunk, {})[[p for p, _ in loras].index(path)] = strength
    return switches


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


def describe(v2v: V2VInput | None, loras: list[tuple[Path, float]],
             switches: dict[int, dict[int, float]]) -> list[tuple[str, object]]:
    rows = [(f"lora {i}", f"{p} at {s}") for i, (p, s) in enumerate(loras)]
    rows += [(f"lora at chunk {k}", ", ".join(f"lora {i} → {s}" for i, s in sorted(change.items())))
             for k, change in sorted(switches.items())]
    if v2v is not None:
        s = v2v.source
        rows.insert(0, ("input video", f"{s.path} ({s.width}x{s.height}, {s.frames} frames at {s.fps:g} fps; "
                                       f"using {v2v.frames}), strength {v2v.strength}"))
    return rows


def apply_loras(bundle, loras: list[tuple[Path, float]], switches: dict[int, dict[int, float]]):
    """Merge every LoRA into the bundle's DiT (and umT5 when the file has text-encoder layers), reporting each;
    the ones --lora-at changes are hooked in unmerged instead: returns their `UnmergedLoRA` (or None) and
    their indices into `loras`."""
    from sf_core.lora import UnmergedLoRA, merge
    from sf_core.weights.lora import read_lora
    text_model = getattr(getattr(bundle.encode, "__self__", None), "model", None)   # a TextEncoder's umT5
    scheduled = sorted({i for change in switches.values() for i in change})
    unmerged = []
    for i, (path, strength) in enumerate(loras):
        try:
            lora = read_lora(path, bundle.model, text_model)
        except (ValueError, OSError) as exc:  # LoRAError / WeightsError name the file and the problem
            raise UsageError(f"--lora {exc}") from None
        if lora.text_layers:  # the prompts are encoded once: the text part is always merged
            merge(text_model, [(lora.text_layers, strength)], keep=False)
        if i in scheduled:
            unmerged.append(lora.layers)
            print(f"note: {lora.report()}, unmerged, starting at strength {strength}", file=sys.stderr)
            continue
        merge(bundle.model, [(lora.layers, strength)], keep=False)
        print(f"note: {lora.report()}, merged at strength {strength}", file=sys.stderr)
    hooks = UnmergedLoRA(bundle.model, unmerged, [loras[i][1] for i in scheduled]) if unmerged else None
    return hooks, scheduled


def with_lora_switches(chunks: Iterator[Chunk], hooks, scheduled: list[int], loras: list[tuple[Path, float]],
                       switches: dict[int, dict[int, float]], state: StreamState) -> Iterator[Chunk]:
    """`chunks` with the unmerged LoRAs' strengths set before each chunk is made (switch chunks count from
    the chunk the run starts at)."""
    if hooks is None:
        yield from chunks
        return
    base, strengths, chunks = state.chunk_index, {i: loras[i][1] for i in scheduled}, iter(chunks)
    while True:
        strengths.update(switches.get(state.chunk_index - base, {}))
        hooks.set_strengths([strengths[i] for i in scheduled], state)
        chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk


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
