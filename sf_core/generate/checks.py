"""Up-front checks of `sf_core.generate` options: numbers, sizes, devices, prompts.

Each check raises `UsageError` with one line naming the option, what was given, what is expected,
before any model file is read.
"""
from __future__ import annotations

import math

import torch


class UsageError(ValueError):
    """Options that do not fit together; printed as one line, exit code 2."""


def number(option: str, value: float | int | None, *, minimum: float | None = None,
           above: float | None = None) -> None:
    """A finite number, at least `minimum` / strictly above `above` (None: not given, nothing to check)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise UsageError(f"{option} {value}: expected a finite number")
    if minimum is not None and value < minimum:
        raise UsageError(f"{option} {value}: expected at least {minimum:g}")
    if above is not None and value <= above:
        raise UsageError(f"{option} {value}: expected a number above {above:g}")


def numbers(args) -> None:
    """Every numeric option of the command line, before anything is resolved."""
    number("--width", args.width, minimum=1)
    number("--height", args.height, minimum=1)
    number("--seconds", args.seconds, above=0)
    number("--frames", args.frames, minimum=1)
    number("--chunks", args.chunks, minimum=1)
    number("--fps", args.fps, above=0)
    number("--chunk-frames", args.chunk_frames, minimum=1)
    number("--shift", args.shift, above=0)
    number("--sink", args.sink, minimum=0)
    if args.window is not None and args.window != -1:
        number("--window", args.window, minimum=1)


def stream_settings(stream, source: str) -> None:
    """A StreamConfig read from `source` (a file's metadata, or the command line) that can be sampled."""
    problems = stream.problems()
    if problems:
        raise UsageError(f"{source}: invalid stream settings: {'; '.join(problems)}")


def device(text: str) -> str:
    """`--device`: a device torch knows that this machine has."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r}: not a device; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"--device {text}: CUDA is not available ({why}, torch {torch.__version__}); "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {text}: Apple MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise UsageError(f"--device {text}: unsupported device type {dev.type!r}; expected cpu, cuda or mps")
    return text


def prompt_text(option: str, text: str) -> str:
    """A prompt that is valid text (command-line bytes that are not UTF-8 arrive as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"{option}: the text is not valid UTF-8 (undecodable byte at character {exc.start}); "
                         "check the terminal's encoding or pass the prompt with --prompt-file") from None
    return text


def prompt_file(path) -> str:
    """`--prompt-file`: the whole file as UTF-8 text, stripped."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--prompt-file {path}: cannot read it ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise UsageError(f"--prompt-file {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start}); save the file as UTF-8") from None
