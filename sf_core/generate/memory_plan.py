"""The memory plan of a generation run, from the files' shapes alone (headers or meta tensors; nothing loaded).

The CLI prints it before loading, `--plan` prints it in full and exits, and a run that cannot fit the
device stops here with one line instead of an allocator error minutes later.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from sf_core import memory
from sf_core.generate.bundle import FileProblem, check_file
from sf_core.generate.files import ModelFiles

FILE_DECODERS = {"vae": "wan", "auto": "wan", "taehv": "taehv"}


def meta_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors as meta tensors (safetensors header, or a `weights_only` load onto meta)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception:  # noqa: BLE001 - not safetensors
        obj = torch.load(path, map_location="meta", weights_only=True, mmap=True)
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _text_config(path: Path):
    from sf_core.text.encoder import comfy_to_official_key, infer_umt5_config
    sd = meta_state_dict(path)
    if "shared.weight" in sd:
        sd = {comfy_to_official_key(k): v for k, v in sd.items()}
    return infer_umt5_config({k: v for k, v in sd.items() if k}, str(path))


def _decoder_config(kind: str, path: Path):
    sd = meta_state_dict(path)
    if "decoder.22.bias" in sd:  # a TAEHV given as --vae is accepted, as by the loader
        from sf_core.vae.taehv import infer_taehv_shape
        shape = infer_taehv_shape(sd, str(path))
        shape.pop("encoder_width", None)
        return "taehv", shape
    from sf_core.vae.wan import infer_vae_config
    return kind, infer_vae_config(sd, str(path))


def plannable(files: ModelFiles) -> bool:
    """Real Wan components (the embedded toy model has its own decoder and text encoder)."""
    return files.text_kind == "umt5" and files.decoder_kind in FILE_DECODERS


def plan_memory(files: ModelFiles, *, height: int, width: int, chunk_frames: int, window: int, sink: int,
                frames: int, dtype: torch.dtype, decoder_dtype: torch.dtype) -> dict[str, int]:
    """`sf_core.memory.estimate_inference` for these files (umT5 on the device while encoding, then freed)."""
    kind, decoder_config = _decoder_config(FILE_DECODERS[files.decoder_kind], files.decoder)
    return memory.estimate_inference(
        memory.config_of_checkpoint(files.checkpoint), height=height, width=width, chunk_frames=chunk_frames,
        window=window, sink=sink, frames=frames, dtype=dtype, decoder=kind, decoder_dtype=decoder_dtype,
        text_encoder="offload", text_dtype=torch.bfloat16 if dtype == torch.float16 else dtype,
        decoder_config=decoder_config, text_config=_text_config(files.text_encoder))


def summary(estimate: dict[str, int], device: str) -> str:
    free = memory.device_free_bytes(device)
    have = f" of {free / memory.GIB:.2f} GiB free on {device}" if free is not None else f" on {device}"
    return (f"memory plan: {estimate['total_peak'] / memory.GIB:.2f} GiB peak{have} (weights "
            f"{estimate['weights'] / memory.GIB:.2f}, KV cache {estimate['kv_cache'] / memory.GIB:.2f}, "
            f"decoder {estimate['decoder_peak'] / memory.GIB:.2f}, text encoder "
            f"{estimate['text_encoder'] / memory.GIB:.2f} GiB)")


def for_plan(plan) -> dict[str, int] | None:
    """The estimate of a resolved CLI `Plan` (None for the embedded toy model). Missing or swapped files
    raise the loader's own FileProblem first."""
    files = plan.files
    if not plannable(files):
        return None
    for role, path in (("checkpoint", files.checkpoint), ("text_encoder", files.text_encoder),
                       ("taehv" if files.decoder_kind == "taehv" else "vae", files.decoder)):
        check_file(role, path)
    return plan_memory(plan.files, height=plan.height, width=plan.width, chunk_frames=plan.stream.chunk_frames,
                       window=plan.stream.window, sink=plan.stream.sink,
                       frames=(plan.chunks or 1) * plan.stream.chunk_frames, dtype=plan.dtype,
                       decoder_dtype=plan.dtype if plan.device.startswith("cuda") else torch.float32)


def check(plan) -> None:
    """Print the one-line plan; raise MemoryPlanError before loading when the run cannot fit the device."""
    if plan.resume_state is not None:  # a resumed cache's size is in the state file
        return
    try:
        estimate = for_plan(plan)
    except (FileProblem, MemoryError):
        raise
    except Exception:  # noqa: BLE001 - an unreadable file: the loader reports it in one line next
        return
    if estimate is None:
        return
    print(summary(estimate, plan.device), file=sys.stderr, flush=True)
    memory.check_fits(estimate, plan.device, plan.stream.window)


def describe(plan) -> str:
    """`--plan`: the full table and the verdict."""
    try:
        estimate = for_plan(plan)
    except (ValueError, OSError) as exc:
        return f"memory plan: unavailable: {exc}"
    if estimate is None:
        return "memory plan: only for real Wan2.1 files (the embedded toy model needs a few MB)"
    try:
        memory.check_fits(estimate, plan.device, plan.stream.window)
        verdict = "fits"
    except memory.MemoryPlanError as exc:
        verdict = f"does not fit: {exc}"
    return f"{memory.table(estimate)}\n{summary(estimate, plan.device)}\n{verdict}"
