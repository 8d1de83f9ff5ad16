"""`run.checkpoint_format: sharded`: FSDP2 state saved by every rank with torch.distributed.checkpoint, resumable."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import metrics, run_train

SHARDED = ["distributed.strategy=fsdp", "run.checkpoint_format=sharded", "run.checkpoint_every=2", "ema.start_step=1"]


@pytest.mark.slow
def test_sharded_checkpoints_resume_exactly_on_two_ranks(tmp_path):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    run_train("tiny_dmd.yaml", [f"run.output_dir={resumed}", "run.max_steps=2", *SHARDED], nproc=2)
    step = resumed / "checkpoints" / "step_00000002"
    assert (step / "generator.dcp" / ".metadata").is_file() and (step / "critic.dcp" / ".metadata").is_file()
    assert not (step / "generator.safetensors").exists()  # nothing gathered on rank 0
    run_train("tiny_dmd.yaml", [f"run.output_dir={resumed}", "run.max_steps=4", *SHARDED], nproc=2)
    run_train("tiny_dmd.yaml", [f"run.output_dir={straight}", "run.max_steps=4", *SHARDED], nproc=2)
    assert metrics(resumed) == metrics(straight) and len(metrics(straight)) == 4
    a, b = load_file(str(resumed / "generator.safetensors")), load_file(str(straight / "generator.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
