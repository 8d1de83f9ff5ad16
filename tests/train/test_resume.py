"""A run killed with SIGKILL after a checkpoint and resumed continues bit-for-bit like an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import ROOT, env, metrics, run_train, train_cmd

TENSOR_FILES = ("generator", "critic", "ema", "optim_generator", "optim_critic")


def _descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (deepest first), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    return _subtree(children, pid)


def _subtree(children: dict[int, list[int]], pid: int) -> list[int]:
    out = []
    for child in children.get(pid, []):
        out += _subtree(children, child) + [child]
    return out


def _kill_after_checkpoint(out, overrides, nproc=1, timeout=300.0) -> int:
    """Start a long run, SIGKILL it as soon as `checkpoints/latest` exists; return the checkpointed step."""
    out.mkdir(parents=True)
    log = open(out.parent / f"{out.name}.log", "w+")
    proc = subprocess.Popen(train_cmd("tiny_dmd.yaml", [f"run.output_dir={out}", "run.max_steps=1000",
                                                        *overrides], nproc),
                            cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=log)
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout
    try:
        while not latest.is_file():
            assert proc.poll() is None, f"training died early:\n{log.seek(0) or log.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the timeout"
            time.sleep(0.05)
    finally:
        # torchrun starts its workers in their own sessions: SIGKILL the workers, then the launcher
        for pid in _descendants(proc.pid) + [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        log.close()
    assert proc.returncode != 0, "the run finished before it could be killed"
    step = int(latest.read_text().strip().split("_")[1])
    return step


def _compare(a, b, step: int):
    assert metrics(a) == metrics(b)
    for name in TENSOR_FILES:
        ta = load_file(str(a / "checkpoints" / f"step_{step:08d}" / f"{name}.safetensors"))
        tb = load_file(str(b / "checkpoints" / f"step_{step:08d}" / f"{name}.safetensors"))
        assert ta.keys() == tb.keys(), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}: {k} differs"
    ga, gb = load_file(str(a / "generator.safetensors")), load_file(str(b / "generator.safetensors"))
    assert all(torch.equal(ga[k], gb[k]) for k in ga)


def _kill_resume_compare(tmp_path, overrides, nproc=1):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    overrides = ["run.checkpoint_every=2", "optim.grad_accum=2", "ema.start_step=1", *overrides]
    step = _kill_after_checkpoint(killed, overrides, nproc)
    # the killed run may have logged steps past its checkpoint; resuming must replay them identically
    end = step + 3
    run_train("tiny_dmd.yaml", [f"run.output_dir={killed}", f"run.max_steps={end}", *overrides], nproc)
    run_train("tiny_dmd.yaml", [f"run.output_dir={clean}", f"run.max_steps={end}", *overrides], nproc)
    assert [r["step"] for r in metrics(killed)] == list(range(end))
    _compare(killed, clean, end)


def test_sigkill_resume_is_exact(tmp_path):
    _kill_resume_compare(tmp_path, [])


@pytest.mark.slow
def test_sigkill_resume_is_exact_two_process_fsdp(tmp_path):
    _kill_resume_compare(tmp_path, ["distributed.strategy=fsdp"], nproc=2)
