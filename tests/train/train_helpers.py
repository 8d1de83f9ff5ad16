"""Shared helpers for the training-infrastructure tests: tiny data files and run launchers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "sf_core" / "train" / "configs"
TINY = {"frames": 6, "channels": 4, "h": 4, "w": 4, "text_dim": 32, "text_len": 16}


def env() -> dict:
    e = dict(os.environ)
    e.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return e


def write_latents(path: Path, n: int = 4, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, TINY["frames"], TINY["channels"], TINY["h"], TINY["w"], generator=g)
    context = torch.randn(n, TINY["text_len"], TINY["text_dim"], generator=g)
    save_file({"latents": latents, "context": context}, str(path))
    return path


def write_ode_pairs(path: Path, n: int = 4, seed: int = 0) -> Path:
    from sf_core.train.ode_pairs import save_ode_pairs
    g = torch.Generator().manual_seed(seed)
    traj = torch.randn(n, 5, TINY["frames"], TINY["channels"], TINY["h"], TINY["w"], generator=g)
    context = torch.randn(n, TINY["text_len"], TINY["text_dim"], generator=g)
    save_ode_pairs(str(path), traj, [1000.0, 937.5, 833.33, 625.0, 0.0], context=context, dtype=torch.float32)
    return path


def data_overrides(objective: str, tmp: Path) -> list[str]:
    """Extra overrides an objective needs beyond tiny_dmd.yaml's prompts."""
    if objective == "gan":
        return [f"data.latents={write_latents(tmp / 'latents.safetensors')}"]
    if objective == "ode":
        return [f"data.ode_pairs={write_ode_pairs(tmp / 'ode.safetensors')}", "data.prompts=null"]
    if objective in ("teacher_forcing", "diffusion_forcing"):
        return [f"data.latents={write_latents(tmp / 'latents.safetensors')}", "data.prompts=null"]
    return []


def train_cmd(config: str, overrides: list[str], nproc: int = 1) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
                if nproc > 1 else [sys.executable])
    return launcher + ["-m", "sf_core.train", "--config", str(CONFIGS / config), *overrides]


def run_train(config: str, overrides: list[str], nproc: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(config, overrides, nproc), cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"training failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
