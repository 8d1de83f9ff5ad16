"""A LoRA trained by sf_core.train, exported as adapters only, reproduces the merged export on the base model."""
from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors import safe_open

from sf_core.lora import merge
from sf_core.train.config import load_config
from sf_core.train.loop import Trainer
from sf_core.train.models import random_model
from sf_core.weights.checkpoint import load_model
from sf_core.weights.lora import read_lora

from train_helpers import CONFIGS, ROOT, env

OVERRIDES = ["lora.enabled=true", "lora.rank=4", "lora.alpha=8", "ema.start_step=1", "optim.lr_generator=0.05",
             "run.max_steps=3", "run.checkpoint_every=3", "stream.window=6", "stream.sink=3"]


def test_trained_lora_round_trips_through_the_adapter_export(tmp_path):
    overrides = [f"data.prompts={ROOT / 'sf_core/train/configs/tiny_prompts.txt'}",
                 f"run.output_dir={tmp_path / 'run'}", *OVERRIDES]
    cfg = load_config(CONFIGS / "tiny_dmd.yaml", overrides)
    Trainer(cfg).run()
    out = tmp_path / "adapters.safetensors"
    proc = subprocess.run([sys.executable, "-m", "sf_core.train", "export", "--config", str(CONFIGS / "tiny_dmd.yaml"),
                           "--lora", "--out", str(out), *overrides],
                          env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["lora"] is True
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["sf_lora"]) == {"alpha": 8.0, "rank": 4}
        assert all(k.endswith((".lora_a", ".lora_b")) for k in f.keys())

    base = random_model(cfg.model_config(), cfg.model.init_seed, cfg.model.init_scale).eval()
    lora = read_lora(out, base)
    assert not lora.unmatched and len(lora.layers) == len(cfg.lora.targets) * cfg.model_config().num_layers
    merge(base, [(lora.layers, 1.0)], keep=False)
    exported, _ = load_model(tmp_path / "run/generator.safetensors", dtype=torch.float32)  # training's merged export
    got, want = base.state_dict(), exported.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    assert not torch.equal(got["blocks.0.self_attn.q.weight"],
                           random_model(cfg.model_config(), cfg.model.init_seed, cfg.model.init_scale)
                           .state_dict()["blocks.0.self_attn.q.weight"])
