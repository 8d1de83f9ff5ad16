"""Full-state training checkpoints (atomic, safetensors) and generator export.

A checkpoint is a folder `checkpoints/step_XXXXXXXX/`:
- `<module>.safetensors` — full state dict of each trainable module (generator, critic, discriminator);
- `optim_<module>.safetensors` — optimizer state flattened to `state.<param>.<key>` tensors, with the
  param groups and non-tensor values as JSON metadata;
- `ema.safetensors` — the fp32 EMA shadow (only once EMA has started);
- `rng_rank<r>.safetensors` — that rank's torch CPU/CUDA, numpy, python and shared/local generator states;
- `trainer.json` — step, data positions, world size (written last).
It is assembled in `.step_XXXXXXXX.tmp/`, renamed into place, and then `checkpoints/latest` (a one-line
file naming the folder) is replaced atomically, so a crash at any moment leaves the previous checkpoint
intact and `latest` always names a complete one. Every file is fsynced before its rename, and the
folders after theirs. On resume (`resume_checkpoint`) a step folder whose tensor files are truncated
or damaged is skipped, with a note, for the newest intact earlier one (keep >= 2 to have one).

With FSDP2 every rank takes part in gathering full state dicts (`torch.distributed.checkpoint.state_dict`
helpers with `full_state_dict=True`); rank 0 writes them; on resume every rank reads the full tensors and
the same helpers re-shard them. With `run.checkpoint_format: sharded` nothing is gathered: each module and
its optimizer go to `<module>.dcp/` (`torch.distributed.checkpoint`, every rank writes its own shards,
resumable the same way; needs a filesystem all ranks share); the EMA shadow stays a gathered file.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from sf_core.weights.checkpoint import fsync_dir, save_safetensors, write_safetensors_atomic
from sf_core.weights.integrity import safetensors_problem
from sf_core.config import ModelConfig, StreamConfig

from .distributed import DistContext
from .lora import merge_lora_state_dict

LATEST = "latest"
TRAINER_FILE = "trainer.json"
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True, strict=True)


class ResumeError(RuntimeError):
    """A checkpoint folder is incomplete or does not match the run."""


# -- optimizer state <-> tensors + JSON ------------------------------------------------------------------------
def flatten_optimizer_state(osd: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`{"state": {param: {key: value}}, "param_groups": [...]}` -> tensors + metadata (JSON)."""
    tensors, scalars = {}, {}
    for param, entries in osd.get("state", {}).items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param}\0{key}"] = value
    return tensors, {"param_groups": json.dumps(osd.get("param_groups", [])), "scalars": json.dumps(scalars)}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict:
    groups = json.loads(meta["param_groups"])
    names = sorted({p for g in groups for p in g["params"]}, key=len, reverse=True)
    state: dict[str, dict] = {}
    for flat, value in tensors.items():
        body = flat[len("state."):]
        param = next((n for n in names if body.startswith(n + ".")), None)
        if param is None:
            raise ResumeError(f"optimizer tensor {flat!r} names no parameter of the saved param groups")
        state.setdefault(param, {})[body[len(param) + 1:]] = value
    for flat, value in json.loads(meta["scalars"]).items():
        param, key = flat.split("\0")
        state.setdefault(param, {})[key] = value
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# -- RNG -----------------------------------------------------------------------------------------------------------
def rng_state(shared: torch.Generator, local: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "shared": shared.get_state(), "local": local.get_state(),
               "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    meta = {"python": json.dumps([version, list(mt), gauss]),
            "numpy": json.dumps([np_name, int(np_pos), int(np_has_gauss), float(np_gauss)])}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, str], shared: torch.Generator,
                local: torch.Generator) -> None:
    version, mt, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(mt), gauss))
    np_name, np_pos, np_has_gauss, np_gauss = json.loads(meta["numpy"])
    np.random.set_state((np_name, tensors["numpy_keys"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    shared.set_state(tensors["shared"])
    local.set_state(tensors["local"])


# -- files -----------------------------------------------------------------------------------------------------------
def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise ResumeError(f"checkpoint file {path} is missing")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except SafetensorError as exc:
        raise ResumeError(f"checkpoint file {path} is unreadable ({exc}); resume from an earlier step folder "
                          "(run.resume=<folder>)") from None


def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The folder named by `<folder>/latest`, if any."""
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    if not (path / TRAINER_FILE).is_file():
        raise ResumeError(f"{pointer} names {path}, which has no {TRAINER_FILE}; the checkpoint is incomplete")
    return path


def checkpoint_problem(path: Path) -> str | None:
    """What makes a step folder unusable (no trainer.json, a truncated or damaged tensor file), else None.
    Reads file headers only."""
    if not (path / TRAINER_FILE).is_file():
        return f"{path} has no {TRAINER_FILE}"
    unfinished = [d.name for d in sorted(path.glob("*.dcp")) if not (d / ".metadata").is_file()]
    if unfinished:
        return f"{path}: sharded state {unfinished[0]} has no .metadata (an interrupted save)"
    return next(filter(None, map(safetensors_problem, sorted(path.glob("*.safetensors")))), None)


def resume_checkpoint(folder: str | Path) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from: the one `latest` names, else (damaged) the newest intact earlier step,
    with a note for each one skipped; (None, []) without a `latest`."""
    folder = Path(folder)
    pointer = folder / LATEST
    if not pointer.is_file():
        return None, []
    named = folder / pointer.read_text().strip()
    earlier = sorted((p for p in folder.glob("step_*") if p.is_dir() and p.name < named.name), reverse=True)
    notes = []
    for path in [named, *earlier]:
        problem = checkpoint_problem(path)
        if problem is None:
            if notes:
                notes.append(f"resuming from {path.name}, the newest intact checkpoint")
            return path, notes
        notes.append(f"checkpoint {path.name} is unusable: {problem}")
    raise ResumeError(f"no usable checkpoint in {folder}: " + "; ".join(notes))


def step_folder_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(folder: str | Path, step: int, *, ctx: DistContext, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], ema, data_state: dict, rng: tuple,
                    extra: dict | None = None, keep: int = 0, sharded: bool = False) -> Path:
    """Collective: every rank must call it. Returns the final checkpoint folder. `sharded`: modules and
    optimizers as `torch.distributed.checkpoint` folders, each rank writing its own shards (no gather)."""
    folder = Path(folder)
    name = step_folder_name(step)
    tmp, final = folder / f".{name}.tmp", folder / name
    if checkpoint_problem(final) is None:
        # this step is already saved (a resumed run that had nothing left to do): the state is the same,
        # and replacing the folder would leave `latest` dangling for a moment
        if ctx.is_main:
            _point_latest(folder, name)
        ctx.barrier()
        return final
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ctx.barrier()
    if sharded:
        _save_sharded(tmp, modules, optimizers)
    else:
        _save_full(tmp, ctx, modules, optimizers)
    if ema is not None:
        shadow = ema.state_dict()
        if ctx.is_main:
            write_safetensors_atomic(shadow, tmp / "ema.safetensors", {"decay": str(ema.decay)})
    tensors, meta = rng_state(*rng)
    write_safetensors_atomic(tensors, tmp / f"rng_rank{ctx.rank}.safetensors", meta)
    ctx.barrier()
    if ctx.is_main:
        _write_json_atomic(tmp / TRAINER_FILE, {"step": step, "data": data_state, "world_size": ctx.world_size,
                                                "modules": sorted(modules), "ema": ema is not None,
                                                "format": "sharded" if sharded else "full",
                                                **(extra or {})})
        fsync_dir(tmp)  # every file and its name are on disk before the folder is renamed into place
        if final.exists():  # an incomplete or damaged folder (a crash during an earlier save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _point_latest(folder, name)
        if keep > 0:
            _prune(folder, keep, final)
    ctx.barrier()
    return final


def _save_full(tmp: Path, ctx: DistContext, modules: dict[str, nn.Module],
               optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Gathers are collective: all ranks run them, rank 0 writes."""
    for key, module in modules.items():
        sd = get_model_state_dict(module, options=_GATHER)
        if ctx.is_main:
            write_safetensors_atomic(sd, tmp / f"{key}.safetensors", {"module": key})
    for key, opt in optimizers.items():
        osd = get_optimizer_state_dict(modules[key], opt, options=_GATHER)
        if ctx.is_main:
            tensors, meta = flatten_optimizer_state(osd)
            write_safetensors_atomic(tensors, tmp / f"optim_{key}.safetensors", meta)


def _sharded_state(module: nn.Module, opt: torch.optim.Optimizer | None) -> dict:
    state = {"model": get_model_state_dict(module)}
    if opt is not None:
        state["optim"] = get_optimizer_state_dict(module, opt)
    return state


def _save_sharded(tmp: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """`<module>.dcp/`: the module's and its optimizer's sharded state; every rank writes its shards."""
    import torch.distributed.checkpoint as dcp
    for key, module in modules.items():
        dcp.save(_sharded_state(module, optimizers.get(key)), checkpoint_id=tmp / f"{key}.dcp")


def _load_sharded(path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    import torch.distributed.checkpoint as dcp
    for key, module in modules.items():
        state = _sharded_state(module, optimizers.get(key))
        dcp.load(state, checkpoint_id=path / f"{key}.dcp")
        set_model_state_dict(module, state["model"])
        if "optim" in state:
            set_optimizer_state_dict(module, optimizers[key], state["optim"])


def _point_latest(folder: Path, name: str) -> None:
    fsync_dir(folder)
    pointer_tmp = folder / f".{LATEST}.tmp"
    pointer_tmp.write_text(name + "\n")
    os.replace(pointer_tmp, folder / LATEST)
    fsync_dir(folder)


def _prune(folder: Path, keep: int, current: Path) -> None:
    done = sorted(p for p in folder.glob("step_*") if p.is_dir() and (p / TRAINER_FILE).is_file())
    for old in done[:-keep]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: str | Path, *, ctx: DistContext, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], rng: tuple) -> dict:
    """Restore modules, optimizers and this rank's RNG; returns trainer.json (step, data, ema flag).
    The EMA shadow is returned by `load_ema_state` (it is created by the loop)."""
    path = Path(path)
    info = json.loads((path / TRAINER_FILE).read_text())
    if info["world_size"] != ctx.world_size:
        raise ResumeError(f"{path} was written by {info['world_size']} ranks, this run has {ctx.world_size}; "
                          "exact resume needs the same world size (RNG streams and data shards are per rank)")
    missing = sorted(set(modules) - set(info["modules"]))
    if missing:
        raise ResumeError(f"{path} has no state for module(s) {missing} (saved: {info['modules']})")
    if info.get("format") == "sharded":
        _load_sharded(path, modules, optimizers)
    else:
        _load_full(path, modules, optimizers)
    tensors, meta = read_tensors(path / f"rng_rank{ctx.rank}.safetensors")
    restore_rng(tensors, meta, *rng)
    return info


def _load_full(path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    for key, module in modules.items():
        sd, _ = read_tensors(path / f"{key}.safetensors")
        set_model_state_dict(module, sd, options=_SCATTER)
    for key, opt in optimizers.items():
        tensors, meta = read_tensors(path / f"optim_{key}.safetensors")
        set_optimizer_state_dict(modules[key], opt, unflatten_optimizer_state(tensors, meta), options=_SCATTER)


def load_ema_state(path: str | Path) -> dict[str, torch.Tensor] | None:
    f = Path(path) / "ema.safetensors"
    return read_tensors(f)[0] if f.is_file() else None


# -- export --------------------------------------------------------------------------------------------------------------
def export_generator(generator_sd: dict[str, torch.Tensor], ema_sd: dict[str, torch.Tensor] | None, path: str | Path,
                     model_config: ModelConfig, stream_config: StreamConfig, lora_scale: float | None = None,
                     dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the generator (EMA weights where present, LoRA merged) as our safetensors with stream metadata."""
    sd = dict(generator_sd)
    if ema_sd:
        sd.update({k: v for k, v in ema_sd.items() if k in sd})
    if lora_scale is not None:
        sd = merge_lora_state_dict(sd, lora_scale)
    sd = {k: v.to(dtype) for k, v in sd.items()}
    return save_safetensors(sd, path, stream_config, model_config=model_config)


def export_from_checkpoint(checkpoint: str | Path, path: str | Path, model_config: ModelConfig,
                           stream_config: StreamConfig, lora_scale: float | None = None,
                           dtype: torch.dtype = torch.bfloat16) -> Path:
    checkpoint = Path(checkpoint)
    sd, _ = read_tensors(checkpoint / "generator.safetensors")
    return export_generator(sd, load_ema_state(checkpoint), path, model_config, stream_config, lora_scale, dtype)
