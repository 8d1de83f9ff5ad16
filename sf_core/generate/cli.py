"""`python -m sf_core.generate` / `sf-generate`: stream a video from a prompt to an mp4, chunk by chunk.

Flow: resolve options into a `Plan` (no model loaded; `--dry-run` prints it) → load the bundle → encode
every prompt once → stream chunks through the DiT, decode each, append it to the mp4 at once.
Ctrl-C or SIGTERM finishes the chunk in progress and closes the file; a second one stops at once.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import re
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from sf_core.generate import files as model_files
from sf_core.generate.files import ModelFiles
from sf_core.generate import memory_plan
from sf_core.memory import MemoryPlanError
from sf_core.generate import checks, inputs
from sf_core.speed.overlap import decode_stream
from sf_core.speed.settings import SpeedError, SpeedSettings, accelerate, add_speed_arguments, speed_from_args
from sf_core.generate.checks import UsageError
from sf_core.text.limits import quote
from sf_core.generate.bundle import FileProblem, decoder_class, load_bundle, problem
from sf_core.config import DTYPES, LONG_DTYPE_NAMES, ModelConfig, StreamConfig
from sf_core.pipeline import PromptSwitch, StreamingPipeline
from sf_core.media.recording import VideoRecorder, channels_last
from sf_core.media.timing import chunk_at_time, chunks_for_frames, decoder_frame_counts
from sf_core.state import StateError, StreamState, read_header
from sf_core.generate.outputs import RunOutputs
from sf_core.numerics import NonFiniteError, check_finite, weights_of
from sf_core.media.outputs import reason
from safetensors import SafetensorError

EXAMPLES = """\
examples:
  # the embedded default model: no downloads, seconds on a CPU
  python -m sf_core.generate --out demo.mp4

  # the real Self-Forcing model with ComfyUI's usual files
  python -m sf_core.generate --prompt "A red fox runs through deep snow" \\
      --checkpoint ComfyUI/models/diffusion_models/self_forcing_dmd.pt \\
      --text-encoder ComfyUI/models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors \\
      --vae ComfyUI/models/vae/wan_2.1_vae.safetensors --seconds 10 --out fox.mp4

  # the same, looking the usual file names up in a ComfyUI models folder, with the tiny preview decoder
  python -m sf_core.generate --models-dir ComfyUI/models --decoder tiny --prompt "..." --until-stopped

  # change the prompt at 5 s and again at chunk 8 (re-encoding the cache under the new prompt)
  python -m sf_core.generate --prompt "a cat sleeps" --prompt-at 5s "the cat wakes up" \\
      --prompt-at c8 "the cat jumps off the sofa" --recache --seconds 12

  # restyle a video chunk by chunk (length, size and fps follow it), with a LoRA at strength 0.8
  python -m sf_core.generate --models-dir ComfyUI/models --input-video in.mp4 --strength 0.9 \\
      --lora ComfyUI/models/loras/style.safetensors:0.8 --prompt "an oil painting" --out styled.mp4

  # continue a saved stream later
  python -m sf_core.generate --chunks 7 --save-state s.safetensors --out part1.mp4
  python -m sf_core.generate --chunks 7 --resume-state s.safetensors --out part2.mp4

Missing or wrong files end with one line naming the file and exit code 2. ComfyUI keeps the DiT in
models/diffusion_models, umT5 in models/text_encoders, the VAE in models/vae, TAEHV in models/vae_approx.
"""

OFFICIAL_CHUNKS = 7  # 21 latent frames, the official clip length (81 frames)
UNTIL_STOPPED_WINDOW = 21


# ---------------------------------------------------------------------------------------------------
# Options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sf-generate", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Stream a Self-Forcing video from a text prompt into an mp4, chunk by chunk. With no model "
                    "options it runs the project's embedded default model (no downloads).")
    g = p.add_argument_group("prompt")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="text prompt (default: the model's suggested prompt)")
    src.add_argument("--prompt-file", type=Path, help="read the prompt from this text file (whole file, stripped)")
    g.add_argument("--prompt-at", nargs=2, action="append", default=[], metavar=("WHEN", "PROMPT"),
                   help="switch to PROMPT at WHEN: seconds into this run ('5s', '2.5s') or a chunk index of this "
                        "run ('c4'); a time switches at the chunk starting nearest to it. Repeatable")
    g.add_argument("--recache", action="store_true",
                   help="on a prompt switch, re-encode the cached frames under the new prompt (faster change)")

    g = p.add_argument_group("model files (all default to the embedded model)")
    g.add_argument("--checkpoint", type=Path, help="causal Wan2.1 DiT: self_forcing_dmd.pt, .safetensors, "
                                                   "diffusers or ComfyUI layouts (models/diffusion_models)")
    g.add_argument("--text-encoder", type=Path, help="umT5-XXL: umt5_xxl_*.safetensors or "
                                                     "models_t5_umt5-xxl-enc-bf16.pth (models/text_encoders)")
    g.add_argument("--vae", type=Path, help="Wan2.1 VAE: wan_2.1_vae.safetensors or Wan2.1_VAE.pth (models/vae)")
    g.add_argument("--decoder", choices=("vae", "tiny", "taehv"), default=None,
                   help="full Wan2.1 VAE (default) or the tiny TAEHV decoder ('tiny' = 'taehv'; needs --taehv or "
                        "--models-dir)")
    g.add_argument("--taehv", type=Path, help="TAEHV tiny decoder: taew2_1.safetensors / lighttaew2_1 "
                                              "(models/vae_approx); implies --decoder tiny")
    g.add_argument("--models-dir", type=Path, help="a ComfyUI models folder: files not given are looked up there "
                                                   "under their usual names (e.g. diffusion_models/self_forcing_dmd.pt)")
    g.add_argument("--download", action="store_true",
                   help="download the usual files that are missing from --models-dir (default ./models) from "
                        "Hugging Face (needs huggingface-hub); nothing is ever downloaded without this flag")

    g = p.add_argument_group("video")
    g.add_argument("--width", type=int, help="pixels, a multiple of 16 for Wan (default: the model's, 832 for Wan)")
    g.add_argument("--height", type=int, help="pixels, a multiple of 16 for Wan (default: the model's, 480 for Wan)")
    n = g.add_mutually_exclusive_group()
    n.add_argument("--seconds", type=float, help="length in seconds at --fps")
    n.add_argument("--frames", type=int, help="length in frames (the last chunk is trimmed to fit)")
    n.add_argument("--chunks", type=int, help=f"length in chunks (default {OFFICIAL_CHUNKS}: 81 frames with Wan)")
    n.add_argument("--until-stopped", action="store_true",
                   help="generate until Ctrl-C; every finished frame is kept (uses a rolling cache)")
    g.add_argument("--fps", type=float, help="frame rate of the mp4 (default 16; the toy model's own rate)")
    g.add_argument("--out", type=Path, default=Path("output.mp4"), help="mp4 to write (default output.mp4)")
    g.add_argument("--png-dir", type=Path, help="also write every frame as frame_000000.png ... into this folder")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out, --save-state or PNG frames (default: refuse, so no run "
                        "destroys another's output)")

    g = p.add_argument_group("sampling (defaults: the checkpoint's stored settings, else the official ones)")
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    g.add_argument("--chunk-frames", type=int, help="latent frames per chunk (3 chunk-wise, 1 frame-wise)")
    g.add_argument("--steps", help="denoising steps: a count N (evenly spaced from 1000) or a list '1000,750,500,250'")
    g.add_argument("--shift", type=float, help="flow-matching timestep shift (official 5.0)")
    g.add_argument("--window", type=int, help="rolling KV-cache window in latent frames (-1 = global cache)")
    g.add_argument("--sink", type=int, help="latent frames pinned at the start of a rolling cache")

    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dtype", choices=("auto", *LONG_DTYPE_NAMES), default="auto",
                   help="weights and activations (default: bfloat16 on CUDA, float32 on CPU)")
    g.add_argument("--save-state", type=Path, help="save the stream state at the end (continue with --resume-state)")
    g.add_argument("--resume-state", type=Path, help="continue a stream saved with --save-state (same model files)")
    g.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    g.add_argument("--plan", action="store_true",
                   help="print the memory plan (weights, caches, activations, decoder; sf_core.memory) and exit")
    inputs.add_arguments(p)
    add_speed_arguments(p)
    return p


@dataclass
class Plan:
    files: ModelFiles
    prompt: str
    prompt_given: bool                        # --prompt / --prompt-file (else the model's suggestion)
    recache: bool
    switches: dict[int, tuple[str, bool]]     # chunk of this run -> (prompt, recache)
    width: int
    height: int
    fps: float
    chunks: int | None                        # None: until stopped
    frame_limit: int | None                   # trim the video to this many frames
    stream: StreamConfig
    stream_source: str
    seed: int
    device: str
    dtype: torch.dtype
    out: Path
    png_dir: Path | None
    save_state: Path | None
    resume_state: Path | None
    notes: list[str] = field(default_factory=list)
    overwrite: bool = False                   # replace existing --out / --png-dir frames / --save-state
    first_frame: int = 0                      # frames the resumed stream wrote before this run
    v2v: inputs.V2VInput | None = None        # --input-video
    loras: list[tuple[Path, float]] = field(default_factory=list)   # --lora FILE:STRENGTH, merged
    lora_switches: dict[int, dict[int, float]] = field(default_factory=dict)  # --lora-at: chunk -> {lora: s}
    speed: SpeedSettings = field(default_factory=SpeedSettings)       # --speed and the speed switches

    def outputs(self) -> RunOutputs:
        return RunOutputs(self.out, self.png_dir, self.save_state, self.resume_state, self.overwrite,
                          self.first_frame)

    def describe(self) -> str:
        s = self.stream
        rows = [
            ("model", self.files.description or "user files"),
            ("checkpoint", self.files.checkpoint),
            ("text encoder", self.files.text_encoder or f"{self.files.text_kind} {self.files.text_options}"),
            ("decoder", f"{self.files.decoder_kind}: {self.files.decoder or 'built in'}"),
            ("prompt", quote(self.prompt)),
            *((f"prompt at chunk {k}", quote(p) + (" (recache)" if r else "")) for k, (p, r) in sorted(self.switches.items())),
            *inputs.describe(self.v2v, self.loras, self.lora_switches),
            ("size", f"{self.width}x{self.height}"),
            ("length", "until stopped (Ctrl-C)" if self.chunks is None else
             f"{self.chunks} chunks" + (f", trimmed to {self.frame_limit} frames" if self.frame_limit else "")),
            ("fps", self.fps),
            ("stream", f"chunk_frames={s.chunk_frames} steps={list(s.denoising_steps)} shift={s.shift} "
                       f"window={s.window} sink={s.sink} ({self.stream_source})"),
            ("seed", self.seed), ("device", self.device), ("dtype", str(self.dtype).replace("torch.", "")),
            ("speed", self.speed.describe()),
            ("out", self.out), ("png dir", self.png_dir), ("save state", self.save_state),
            ("resume state", self.resume_state),
        ]
        lines = [f"{k:>16}: {v}" for k, v in rows if v is not None]
        return "\n".join(lines + [f"{'note':>16}: {n}" for n in self.notes])


def parse_when(text: str) -> tuple[str, float]:
    """'5s' / '2.5s' -> ("s", 5.0); 'c4' -> ("c", 4)."""
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*s|c(\d+))\s*", text.lower())
    if not m:
        raise UsageError(f"--prompt-at {text!r}: expected seconds like '5s' or '2.5s', or a chunk index like 'c4'")
    return ("s", float(m.group(1))) if m.group(1) is not None else ("c", int(m.group(2)))


def parse_steps(text: str) -> tuple[float, ...]:
    try:
        if "," in text:
            steps = tuple(float(s) for s in text.split(",") if s.strip())
        else:
            n = int(text)
            if n < 1:
                raise ValueError
            steps = tuple(1000.0 * (n - i) / n for i in range(n))
    except ValueError:
        raise UsageError(f"--steps {text!r}: expected a positive count like 4 or a list like 1000,750,500,250") from None
    if not steps or any(not 0 < s <= 1000 for s in steps):
        raise UsageError(f"--steps {text!r}: every step must lie in (0, 1000]")
    return steps


def _stored_stream_config(path: Path) -> StreamConfig | None:
    """The `sf_stream` metadata of a safetensors checkpoint (header only; None for other formats)."""
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
    except Exception:  # noqa: BLE001 - not safetensors, or unreadable: the loader reports it later
        return None
    try:
        return StreamConfig.from_metadata(meta)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--checkpoint {path}: its sf_stream metadata is not valid ({type(exc).__name__}: "
                         f"{str(exc)[:120]}); convert the file again (python -m sf_core.weights.convert)") from None


def resolve_files(args) -> ModelFiles:
    given = {"checkpoint": args.checkpoint, "text_encoder": args.text_encoder, "vae": args.vae, "taehv": args.taehv}
    tiny = args.decoder in ("tiny", "taehv") or args.taehv is not None
    if args.decoder == "vae" and args.taehv is not None:
        raise UsageError("--decoder vae and --taehv contradict each other")
    if not any(given.values()) and args.models_dir is None and not args.download:
        if tiny:
            raise UsageError("the embedded default model has its own decoder; --decoder tiny needs real files")
        try:
            return model_files.default_model()
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
    models_dir = args.models_dir or Path("models")
    needed = ["checkpoint", "text_encoder", "taehv" if tiny else "vae"]
    for role in needed:
        if given[role] is None:
            given[role] = model_files.find_in_models_dir(models_dir, role)
        if given[role] is None and args.download:
            given[role] = model_files.download_official(models_dir, role)
    missing = [r for r in needed if given[r] is None]
    if missing:
        names = "; ".join(f"--{r.replace('_', '-')} (e.g. {models_dir}/{model_files.OFFICIAL_FILES[r][0]}/"
                          f"{model_files.OFFICIAL_FILES[r][1][0]})" for r in missing)
        raise UsageError(f"missing model file(s): {names}; give them, point --models-dir at a ComfyUI models "
                         "folder holding them, add --download, or give no model option for the embedded model")
    return ModelFiles(checkpoint=given["checkpoint"], text_encoder=given["text_encoder"],
                      decoder=given["taehv"] if tiny else given["vae"], decoder_kind="taehv" if tiny else "vae")


def resolve_prompt(args, defaults: dict) -> str:
    if args.prompt_file is None:
        return checks.prompt_text("--prompt", args.prompt) if args.prompt is not None else defaults.get("prompt", "")
    return checks.prompt_file(args.prompt_file)


def resolve_stream(args, files: ModelFiles, notes: list[str]) -> tuple[StreamConfig, str]:
    """The checkpoint's stored stream settings (else the official ones) with the command line on top."""
    stored = _stored_stream_config(files.checkpoint) if files.checkpoint.is_file() else None
    stream, source = (stored, "checkpoint metadata") if stored else (StreamConfig(), "official defaults")
    if stored:
        checks.stream_settings(stored, f"--checkpoint {files.checkpoint}: its sf_stream metadata")
    overrides = {k: v for k, v in (("chunk_frames", args.chunk_frames), ("shift", args.shift),
                                   ("window", args.window), ("sink", args.sink)) if v is not None}
    if args.steps is not None:
        overrides["denoising_steps"] = parse_steps(args.steps)
    if overrides:
        stream, source = replace(stream, **overrides), source + " + command line"
    if args.until_stopped and stream.window == -1:
        stream = replace(stream, window=UNTIL_STOPPED_WINDOW)
        notes.append(f"--until-stopped needs a rolling cache: using --window {UNTIL_STOPPED_WINDOW}")
    checks.stream_settings(stream, "the command line")
    return stream, source


def resolve_length(args, defaults: dict, fps: float, counts: tuple[int, int]) -> tuple[int | None, int | None]:
    """(chunks or None until stopped, frame limit or None when the chunks fit exactly)."""
    if args.until_stopped:
        return None, None
    if args.chunks is not None:
        chunks, frame_limit = args.chunks, None
    elif args.frames is not None or args.seconds is not None:
        frame_limit = args.frames if args.frames is not None else math.ceil(args.seconds * fps - 1e-9)
        if frame_limit < 1:
            raise UsageError("the requested length is less than one frame")
        chunks = chunks_for_frames(frame_limit, *counts)
        if frame_limit == counts[0] + (chunks - 1) * counts[1]:
            frame_limit = None
    else:
        chunks, frame_limit = defaults.get("chunks", OFFICIAL_CHUNKS), None
    if chunks < 1:
        raise UsageError(f"--chunks must be at least 1, got {chunks}")
    return chunks, frame_limit


def resolve_switches(args, fps: float, counts: tuple[int, int], chunks: int | None,
                     notes: list[str]) -> dict[int, tuple[str, bool]]:
    switches = {}
    for when, text in args.prompt_at:
        unit, value = parse_when(when)
        k = int(value) if unit == "c" else chunk_at_time(value, fps, *counts)
        if chunks is not None and k >= chunks:
            notes.append(f"--prompt-at {when} falls at chunk {k}, after the last chunk ({chunks - 1}): ignored")
            continue
        switches[k] = (checks.prompt_text(f"--prompt-at {when}", text), args.recache)
    return switches


def resolve_size(args, defaults: dict, multiple: int) -> tuple[int, int]:
    width = args.width if args.width is not None else defaults.get("width", 832)
    height = args.height if args.height is not None else defaults.get("height", 480)
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise UsageError(f"--width/--height must be positive multiples of {multiple}, got {width}x{height}; "
                         f"nearest: {max(multiple, round(width / multiple) * multiple)}x"
                         f"{max(multiple, round(height / multiple) * multiple)}")
    return width, height


def resolve_device(args) -> tuple[str, torch.dtype]:
    device = checks.device(args.device) if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dtype == "auto":
        return device, torch.bfloat16 if device.startswith("cuda") else torch.float32
    return device, DTYPES[args.dtype]


def resolve(args) -> Plan:
    """All options resolved against the model's defaults; loads nothing large."""
    files = resolve_files(args)
    defaults, notes = files.defaults, []
    video, loras = inputs.probe_input(args), inputs.resolve_loras(args)
    if video is not None:
        defaults = inputs.source_defaults(video, defaults, decoder_class(files).spatial_stride * 2, notes)
    prompt = resolve_prompt(args, defaults)
    header = resume_header(args.resume_state) if args.resume_state is not None else None
    stream, source = resolve_stream(args, files, notes)
    fps = args.fps if args.fps is not None else defaults.get("fps", 16)
    decoder = decoder_class(files)
    if header is not None:  # continue at the size the stream was made at
        stride = decoder.spatial_stride
        defaults = {**defaults, "width": header["latent_width"] * stride, "height": header["latent_height"] * stride}
    counts = decoder_frame_counts(decoder, stream.chunk_frames)
    if header is not None:  # a continued stream's first chunk is a later chunk: it decodes with the saved memory
        counts = (counts[1], counts[1])
    chunks, frame_limit = resolve_length(args, defaults, fps, counts)
    if frame_limit is not None and args.save_state is not None:
        whole = counts[0] + (chunks - 1) * counts[1]
        notes.append(f"--save-state: writing all {whole} frames of the {chunks} chunks (not {frame_limit}), so "
                     f"--resume-state continues with the next frame, without a gap")
        frame_limit = None
    v2v = None
    if video is not None:
        v2v, chunks, frame_limit = inputs.v2v_length(args, video, chunks, frame_limit, counts)
    switches = resolve_switches(args, fps, counts, chunks, notes)
    if 0 in switches and args.resume_state is None:
        prompt = switches.pop(0)[0]
    # every Wan DiT patches 2×2 pixels of latent; the pipeline checks the loaded model's patch again
    width, height = resolve_size(args, defaults, decoder.spatial_stride * ModelConfig().patch_size[1])
    device, dtype = resolve_device(args)
    plan = Plan(files, prompt, args.prompt is not None or args.prompt_file is not None, args.recache, switches,
                width, height, fps, chunks, frame_limit, stream, source, args.seed, device, dtype, args.out,
                args.png_dir, args.save_state, args.resume_state, notes)
    plan.overwrite = args.overwrite
    plan.v2v, plan.loras = v2v, loras
    plan.lora_switches = inputs.resolve_lora_switches(args, loras, fps, counts)
    try:
        plan.speed = speed_from_args(args, device, dtype)
    except SpeedError as exc:
        raise UsageError(str(exc)) from None
    plan.first_frame = int(header["info"].get("frames_written", 0)) if header is not None else 0
    plan.outputs().check()
    return plan


def resume_header(path: Path) -> dict:
    """The validated header of a `--resume-state` file (no tensors read)."""
    if not path.is_file():
        raise UsageError(f"--resume-state {path}: not found (write one with --save-state)")
    try:
        return read_header(path)
    except StateError as exc:
        raise UsageError(f"--resume-state {exc}") from None


# ---------------------------------------------------------------------------------------------------
# Running


class GracefulStop:
    """First Ctrl-C or SIGTERM (`docker stop`, systemd): finish the chunk in progress, then stop.
    A second one: KeyboardInterrupt at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "GracefulStop":
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after the chunk in progress (again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Progress:
    """A tqdm bar on a terminal; one plain line per chunk otherwise (logs, pipes, tests)."""

    def __init__(self, total: int | None):
        self.interactive = sys.stderr.isatty()
        self.bar = None
        if self.interactive:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="chunk", file=sys.stderr, dynamic_ncols=True)
        self.frames, self.seconds = 0, 0.0

    def chunk(self, index: int, frames: int, seconds: float) -> None:
        self.frames += frames
        self.seconds += seconds
        fps = frames / seconds if seconds > 0 else float("inf")
        mean = self.frames / self.seconds if self.seconds > 0 else float("inf")
        if self.bar is not None:
            self.bar.set_postfix_str(f"{fps:.1f} fps, {seconds * 1000:.0f} ms/chunk, {self.frames} frames")
            self.bar.update(1)
        else:
            print(f"chunk {index}: {frames} frames ({self.frames} total) in {seconds:.3f} s = {fps:.1f} fps "
                  f"(mean {mean:.1f} fps)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _encode(bundle, prompts: list[str], text_dim: int, files: ModelFiles) -> dict[str, torch.Tensor]:
    unique = list(dict.fromkeys(prompts))
    try:
        context = bundle.encode(unique)
    except ValueError as exc:  # e.g. a word outside the toy vocabulary
        raise UsageError(str(exc)) from None
    if context.shape[-1] != text_dim:
        raise problem("text_encoder", files.text_encoder,
                      f"produces {context.shape[-1]}-dim embeddings but the checkpoint expects text_dim {text_dim}")
    if not bool(torch.isfinite(context).all()):
        raise problem("text_encoder", files.text_encoder, "produces NaN/Inf embeddings (damaged weights, or a "
                      "float16 overflow: try --dtype bfloat16)")
    for note in filter(None, map(bundle.truncation, unique)):
        print(f"note: {note}", file=sys.stderr, flush=True)
    return {p: context[i:i + 1] for i, p in enumerate(unique)}


def run(plan: Plan) -> int:
    """Claim the outputs first (nothing loads unless they can be written), then stream into them."""
    outputs, recorder = plan.outputs(), None
    try:
        recorder = outputs.open(plan.fps)
        return _stream(plan, recorder)
    finally:
        outputs.release(recorder)


def _stream(plan: Plan, recorder: VideoRecorder) -> int:
    """Load, stream every chunk into `recorder`, save the state if asked; the exit code."""
    decoder_dtype = plan.dtype if plan.device.startswith("cuda") else torch.float32
    bundle = load_bundle(plan.files, plan.device, plan.dtype, decoder_dtype, plan.stream)
    lora_hooks, scheduled = inputs.apply_loras(bundle, plan.loras, plan.lora_switches)
    prompts = [plan.prompt] + [p for p, _ in plan.switches.values()]
    contexts = _encode(bundle, prompts, bundle.model.config.text_dim, plan.files)
    bundle.encode = None  # the text encoder is no longer needed: free it

    print(f"speed: {plan.speed.describe()}", file=sys.stderr, flush=True)
    pipe = StreamingPipeline(accelerate(bundle.model, plan.speed), plan.stream, device=plan.device, dtype=plan.dtype)
    state = _start(plan, pipe, bundle.decoder, contexts)
    base = state.chunk_index
    switches = {base + k: PromptSwitch(contexts[p], r) for k, (p, r) in plan.switches.items()}
    chunks = (inputs.v2v_chunks(plan.v2v, pipe, state, bundle.decoder, plan.height, plan.width, switches)
              if plan.v2v else pipe.stream(state, plan.chunks, switches,
                                           commit_last=not plan.speed.skip_last_cache_pass))
    chunks = inputs.with_lora_switches(chunks, lora_hooks, scheduled, plan.loras, plan.lora_switches, state)

    print(f"writing {plan.out}" + (f" and {plan.png_dir}/" if plan.png_dir else ""), file=sys.stderr, flush=True)
    interrupted = _record(plan, recorder, pipe, bundle, chunks, base)
    print(f"wrote {recorder.frames_written} frames ({state.chunk_index - base} chunks) to {plan.out}", flush=True)
    if plan.save_state is None:
        return 130 if interrupted else 0
    if interrupted:
        print("state not saved: stopped in the middle of a chunk", file=sys.stderr)
        return 130
    return _save_state(plan, state, bundle.decoder, recorder.frames_written)


def _start(plan: Plan, pipe: StreamingPipeline, decoder, contexts) -> StreamState:
    """A resumed stream, or a new one with its cache sized for the planned chunks."""
    if plan.resume_state is not None:
        state = _resume(plan, pipe, decoder, contexts)
    else:
        h, w = plan.height // decoder.spatial_stride, plan.width // decoder.spatial_stride
        max_frames = (plan.chunks or 1) * plan.stream.chunk_frames
        state = pipe.start(contexts[plan.prompt], h * 8, w * 8, seed=plan.seed, max_frames=max_frames)
        state.info["decoder"] = plan.files.decoder_kind
    inputs.check_stream_loras(state, plan.loras, plan.resume_state)
    return state


def _record(plan: Plan, recorder: VideoRecorder, pipe: StreamingPipeline, bundle, chunks, base: int) -> bool:
    """Decode and write every chunk as it comes; True when a second signal interrupted a chunk."""
    progress = Progress(plan.chunks)
    culprits = {"dit": {f"--checkpoint {plan.files.checkpoint}": bundle.model},
                "decoder": {f"the decoder {plan.files.decoder or plan.files.decoder_kind}": weights_of(bundle.decoder)}}
    # with overlap the DiT runs ahead in a thread; a stop request still yields every chunk already made
    overlap = plan.speed.overlap_decode and not plan.v2v  # V2V encodes its input in the loop: sequential
    try:
        with GracefulStop() as stop:
            started = time.perf_counter()
            for chunk, frames in decode_stream(chunks, bundle.decoder, pipe.device, overlap,
                                               stop=lambda: stop.requested):
                _check(plan, recorder, f"chunk {chunk.index - base}", chunk.latents, culprits["dit"])
                frames = frames[0]  # [T, 3, H, W] in [-1, 1]
                _check(plan, recorder, f"decoded chunk {chunk.index - base}", frames, culprits["decoder"])
                if plan.frame_limit is not None:
                    frames = frames[: plan.frame_limit - recorder.frames_written]
                recorder.write(channels_last(frames))
                now = time.perf_counter()
                progress.chunk(chunk.index - base, frames.shape[0], now - started)
                started = now
                if stop.requested:
                    break
    except KeyboardInterrupt:
        return True
    finally:
        recorder.close()
        progress.close()
    return False


def _save_state(plan: Plan, state: StreamState, decoder, frames_written: int) -> int:
    state.extras = {"vae." + k: v for k, v in decoder.state_dict().items()}
    state.info["frames_written"] = state.info.get("frames_written", 0) + frames_written
    try:
        with GracefulStop():  # a first signal now is ignored: the stream is done, its state is written
            state.save(plan.save_state)
    except (OSError, SafetensorError) as exc:
        print(f"error: --save-state {plan.save_state}: cannot write it ({reason(exc)}); the stream state "
              f"is lost, the video {plan.out} is complete", file=sys.stderr)
        return 2
    print(f"saved the stream state to {plan.save_state}", file=sys.stderr)
    return 0


def _check(plan: Plan, recorder: VideoRecorder, what: str, x: torch.Tensor, culprits: dict) -> None:
    """Stop with one line on NaN/Inf, saying what the video keeps."""
    try:
        check_finite(what, x, culprits, plan.dtype)
    except NonFiniteError as exc:
        kept = f"{plan.out} keeps the {recorder.frames_written} frame(s) before it" if recorder.frames_written \
            else "nothing was written"
        raise NonFiniteError(f"{exc}; {kept}") from None


def _resume(plan: Plan, pipe: StreamingPipeline, decoder, contexts) -> StreamState:
    try:
        state = StreamState.load(plan.resume_state, device=plan.device, dtype=plan.dtype)
    except StateError as exc:
        raise UsageError(f"--resume-state {exc}") from None
    stride = decoder.spatial_stride
    try:
        state.check_compatible(pipe.model, plan.stream, f"--resume-state {plan.resume_state}",
                               (plan.height // stride, plan.width // stride))
    except StateError as exc:
        raise UsageError(str(exc)) from None
    if state.info.get("decoder", plan.files.decoder_kind) != plan.files.decoder_kind:
        raise UsageError(f"--resume-state {plan.resume_state}: made with decoder {state.info['decoder']!r}, "
                         f"this run uses {plan.files.decoder_kind!r}")
    vae_state = {k[len("vae."):]: v for k, v in state.extras.items() if k.startswith("vae.")}
    try:
        decoder.load_state_dict(vae_state)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UsageError(f"--resume-state {plan.resume_state}: its decoder state does not fit this decoder "
                         f"({type(exc).__name__}: {str(exc)[:200]}); resume with the decoder it was made with") from None
    if plan.prompt_given:  # otherwise the saved prompt carries on
        pipe.switch_prompt(state, contexts[plan.prompt], plan.recache)
    if plan.chunks is not None:
        state.cache.reserve(state.cache.frames_held + plan.chunks * plan.stream.chunk_frames)
    return state


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _terminate_as_interrupt():  # SIGTERM before the chunk loop: like Ctrl-C (claimed outputs are removed)
        try:
            return _main(args)
        except (FileProblem, UsageError, RuntimeError, MemoryPlanError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted outside a chunk; frames reported as written are in the video, nothing "
                  "else was saved", file=sys.stderr)
            return 130


def _main(args) -> int:
    checks.numbers(args)
    plan = resolve(args)
    if args.dry_run:
        print(plan.describe())
        return 0
    if plan.files.description:
        print(f"model: {plan.files.description}", file=sys.stderr)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.plan:
        print(memory_plan.describe(plan))
        return 0
    memory_plan.check(plan)  # before anything is loaded
    return run(plan)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (like Ctrl-C) until GracefulStop takes over for the chunk loop."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

