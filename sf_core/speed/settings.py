"""Speed levels: `off | safe | max` and the individual switches, resolved into concrete settings for a device.

  off   the plain path: eager model, every chunk committed to the cache, sequential decode.
  safe  every optimisation that leaves the output unchanged and that the device supports: CUDA-graph replay
        (same kernels, replayed), decode of chunk k overlapping the DiT of chunk k+1 (CUDA), the last
        chunk's cache pass skipped when the stream will not be continued, RoPE rotations and time embeddings
        computed once per chunk / per timestep value.
  max   safe + output within bf16 tolerance: `torch.compile` (CUDA), fast float32 RoPE, fp8 block linears
        (fp8 tensor cores, sm89+), the cuDNN attention kernel on sm90+ when flash-attn is not installed.
An explicit switch wins over the level; a switch the device cannot run is refused with one line.
The CLI (`--speed`, `--compile`, ...) and the stream nodes (`speed` option) both resolve through here.
"""
from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from sf_core.attention import BACKENDS, _cudnn_attention_available, flash_available, resolve_backend
from sf_core.model import ROPE_MODES

LEVELS = ("off", "safe", "max")


class SpeedError(ValueError):
    """A requested speed switch cannot run on this device."""


@dataclass(frozen=True)
class Capabilities:
    """What the device offers the speed paths."""
    cuda: bool
    compiler: bool      # a torch.compile backend that generates code for it (triton for CUDA)
    fp8_matmul: bool    # torch._scaled_mm with fp8 tensor cores (sm89+)
    flash: bool         # the flash-attn package for this device and dtype
    cudnn_attention: bool
    sm90: bool

    @classmethod
    def of(cls, device, dtype: torch.dtype) -> "Capabilities":
        device = torch.device(device)
        cuda = device.type == "cuda" and torch.cuda.is_available()
        major, minor = torch.cuda.get_device_capability(device) if cuda else (0, 0)
        half = dtype in (torch.float16, torch.bfloat16)
        return cls(cuda=cuda, compiler=cuda and importlib.util.find_spec("triton") is not None,
                   fp8_matmul=cuda and (major, minor) >= (8, 9), flash=cuda and flash_available(device, dtype),
                   cudnn_attention=cuda and half and _cudnn_attention_available(), sm90=major >= 9)


@dataclass(frozen=True)
class SpeedSettings:
    level: str = "off"
    compile: bool = False
    cuda_graphs: bool = False
    attention: str | None = None       # None: the model's own
    rope: str | None = None            # None: the model's own
    fp8: bool = False
    overlap_decode: bool = False
    skip_last_cache_pass: bool = False
    notes: tuple[str, ...] = field(default=(), compare=False)   # why the level left a switch off

    @property
    def output_preserving(self) -> bool:
        return not (self.compile or self.fp8 or self.rope == "fast" or self.attention is not None)  # kernels differ

    def describe(self) -> str:
        on = [name for name, value in (("compile", self.compile), ("cuda graphs", self.cuda_graphs),
                                       ("fp8 linears", self.fp8), ("overlap decode", self.overlap_decode),
                                       ("final cache pass skipped", self.skip_last_cache_pass)) if value]
        on += [f"attention {self.attention}"] if self.attention else []
        on += [f"rope {self.rope}"] if self.rope else []
        text = f"{self.level}: " + (", ".join(on) or "plain path")
        text += "; output identical to --speed off" if self.output_preserving else "; output within bf16 tolerance"
        return text + "".join(f"; {n}" for n in self.notes)


def resolve_speed(level: str, device, dtype: torch.dtype, overrides: dict | None = None,
                  caps: Capabilities | None = None) -> SpeedSettings:
    """`level` + explicit switches (None = the level decides) -> settings; refuses what the device cannot run."""
    if level not in LEVELS:
        raise SpeedError(f"speed {level!r}: expected one of {', '.join(LEVELS)}")
    caps = caps or Capabilities.of(device, dtype)
    chosen, notes = _level(level, caps)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(given) - {f for f in SpeedSettings.__dataclass_fields__ if f not in ("level", "notes")}
    if unknown:
        raise SpeedError(f"unknown speed switch(es) {sorted(unknown)}")
    _check(given, caps, dtype)
    notes = [n for n in notes if n.split(":")[0].replace(" ", "_") not in given]
    return replace(chosen, **given, notes=tuple(notes))


def _level(level: str, caps: Capabilities) -> tuple[SpeedSettings, list[str]]:
    if level == "off":
        return SpeedSettings("off"), []
    notes = []
    safe = dict(skip_last_cache_pass=True, cuda_graphs=caps.cuda, overlap_decode=caps.cuda)
    if not caps.cuda:
        notes += ["cuda graphs: off (needs CUDA)",
                  "overlap decode: off (on a CPU the decoder and the DiT share the same cores)"]
    if level == "safe":
        return SpeedSettings("safe", **safe), notes
    fast = dict(rope="fast", compile=caps.compiler, fp8=caps.fp8_matmul)
    if caps.sm90 and caps.cudnn_attention and not caps.flash:
        fast["attention"] = "cudnn"
    if not caps.compiler:
        notes.append("compile: off (" + ("needs triton" if caps.cuda else
                                         "on a CPU compiling costs more than it saves; force with --compile") + ")")
    if not caps.fp8_matmul:
        notes.append("fp8: off (needs fp8 tensor cores, CUDA sm89+)")
    return SpeedSettings("max", **safe, **fast), notes


def _check(given: dict, caps: Capabilities, dtype: torch.dtype) -> None:
    if given.get("cuda_graphs") and not caps.cuda:
        raise SpeedError("cuda graphs need a CUDA device; drop --cuda-graphs or run with --device cuda")
    if given.get("fp8") and not caps.fp8_matmul and caps.cuda:
        raise SpeedError("fp8 linears need fp8 tensor cores (CUDA compute capability 8.9+, e.g. L4, H100); "
                         "drop --fp8")
    if given.get("attention") is not None:
        try:
            resolve_backend(given["attention"], "cuda" if caps.cuda else "cpu", dtype, has_flash=caps.flash,
                            has_cudnn=caps.cudnn_attention)
        except ValueError as exc:
            raise SpeedError(f"--attention {given['attention']}: {exc}") from None
    if given.get("rope") not in (None, *ROPE_MODES):
        raise SpeedError(f"rope {given['rope']!r}: expected one of {', '.join(ROPE_MODES)}")


# -- applying the settings to a model ------------------------------------------------------------------------
def accelerate(model: nn.Module, settings: SpeedSettings) -> nn.Module:
    """The forward to hand to `StreamingPipeline` for `settings`: `model` itself for `off`, else a
    `FastForward` over `model` (RoPE mode as a per-forward override; the time-embedding memo turned on),
    kept on the model and reused for the same settings, so compiled code and captured graphs survive from
    one run to the next (the nodes build a pipeline per run). It always reads the model's current weights.
    `attention` and `fp8` change the model in place (its attention kernel; its block linears become fp8):
    for callers that own the model (the CLI); the nodes never ask for them."""
    if settings == SpeedSettings("off"):
        return model
    from sf_core.speed.graphs import FastForward

    if settings.attention is not None:
        model.attention_backend = settings.attention
        for module in model.modules():
            if hasattr(module, "backend"):
                module.backend = settings.attention
    if settings.fp8 and not getattr(model, "fp8_linears", False):
        from sf_core.speed.fp8 import to_fp8_linears_
        to_fp8_linears_(model)
        model.fp8_linears = True
    if model._time_memo is None:
        model._time_memo = {}
    memo = model.__dict__.setdefault("_sf_forwards", {})  # a plain attribute: not a submodule, not in state_dict
    if settings not in memo:
        memo[settings] = FastForward(model, compile=settings.compile, cuda_graphs=settings.cuda_graphs,
                                     rope=settings.rope)
    return memo[settings]


# -- command line ----------------------------------------------------------------------------------------------
def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("speed (default --speed safe: unchanged output)")
    g.add_argument("--speed", choices=LEVELS, default="safe",
                   help="off: plain path; safe: every output-preserving optimisation this device supports "
                        "(CUDA graphs, overlapped decode, no final cache pass unless --save-state); max: also "
                        "torch.compile, fast RoPE, fp8 linears, cuDNN attention (output within bf16 tolerance). "
                        "The choice is printed")
    flag = argparse.BooleanOptionalAction
    g.add_argument("--compile", action=flag, default=None, help="torch.compile the per-chunk DiT forward")
    g.add_argument("--cuda-graphs", action=flag, default=None, help="replay the per-chunk forward as CUDA graphs")
    g.add_argument("--attention", choices=BACKENDS, help="attention kernel (default: the level's choice)")
    g.add_argument("--rope", choices=ROPE_MODES, help="exact float64 RoPE (official) or fast float32")
    g.add_argument("--fp8", action=flag, default=None, help="fp8 (e4m3) block linears on fp8 tensor cores")
    g.add_argument("--overlap-decode", action=flag, default=None,
                   help="decode chunk k while the DiT makes chunk k+1")


def speed_from_args(args, device, dtype: torch.dtype, caps: Capabilities | None = None) -> SpeedSettings:
    overrides = {k: getattr(args, k) for k in ("compile", "cuda_graphs", "attention", "rope", "fp8",
                                               "overlap_decode")}
    if getattr(args, "save_state", None) is not None:
        overrides["skip_last_cache_pass"] = False  # a saved stream is continued: its last chunk must be cached
    return resolve_speed(args.speed, device, dtype, overrides, caps)
