"""Exported generators load in the inference engine and stream; official `.pt` files initialise training."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sf_core.weights.checkpoint import load_model
from sf_core.pipeline import StreamingPipeline
from sf_core.train.config import load_config
from sf_core.train.lora import merge_lora_state_dict
from sf_core.train.loop import Trainer
from sf_core.train.models import random_model

from train_helpers import CONFIGS, ROOT


def _cfg(tmp_path, *overrides):
    return load_config(CONFIGS / "tiny_dmd.yaml",
                       [f"data.prompts={ROOT / 'sf_core/train/configs/tiny_prompts.txt'}",
                        f"run.output_dir={tmp_path / 'run'}", "run.max_steps=3", "run.checkpoint_every=100",
                        "stream.window=6", "stream.sink=3", *overrides])


def test_ema_export_loads_and_streams(tmp_path):
    cfg = _cfg(tmp_path, "ema.start_step=1", "optim.lr_generator=0.05", "samples.every=3", "samples.num_chunks=2")
    trainer = Trainer(cfg)
    trainer.run()
    ckpt = load_file(str(tmp_path / "run/checkpoints/step_00000003/generator.safetensors"))
    ema = load_file(str(tmp_path / "run/checkpoints/step_00000003/ema.safetensors"))
    assert ema.keys() == ckpt.keys() and any(not torch.equal(ema[k], ckpt[k]) for k in ema)

    model, stream = load_model(tmp_path / "run/generator.safetensors", dtype=torch.float32)
    assert (stream.chunk_frames, stream.window, stream.sink, stream.shift) == (3, 6, 3, 5.0)
    assert stream.denoising_steps == (1000.0, 750.0, 500.0, 250.0)
    sd = model.state_dict()
    assert sd.keys() == ema.keys()
    for k in sd:  # the export is the EMA shadow, not the raw weights
        torch.testing.assert_close(sd[k], ema[k], rtol=0, atol=0)

    pipe = StreamingPipeline(model.eval(), stream)
    context = trainer.embeddings.get(["A red fox runs through deep snow under a pale winter sky."])
    state = pipe.start(context, 32, 32, seed=1, max_frames=12)
    latents = torch.cat([c.latents for c in pipe.stream(state, 4)], 1)  # 12 frames: past the 6-frame window
    assert latents.shape == (1, 12, 4, 4, 4) and torch.isfinite(latents).all()

    # the step-3 sample clip is what the streaming pipeline makes with the (raw) step-3 weights
    sample = load_file(str(tmp_path / "run/samples/step_00000003/latents.safetensors"))["latents"]
    raw = random_model(cfg.model_config(), 0)
    raw.load_state_dict(ckpt)
    pipe = StreamingPipeline(raw.eval(), stream)
    state = pipe.start(context, 32, 32, seed=cfg.samples.seed, max_frames=6)
    expected = torch.cat([c.latents for c in pipe.stream(state, 2)], 1)
    assert sample.shape == (1, 6, 4, 4, 4)
    torch.testing.assert_close(sample, expected, rtol=0, atol=0)


def test_lora_training_exports_merged_weights(tmp_path):
    cfg = _cfg(tmp_path, "lora.enabled=true", "lora.rank=4", "lora.alpha=8", "ema.start_step=1",
               "optim.lr_generator=0.05")
    Trainer(cfg).run()
    ckpt = load_file(str(tmp_path / "run/checkpoints/step_00000003/generator.safetensors"))
    ema = load_file(str(tmp_path / "run/checkpoints/step_00000003/ema.safetensors"))
    assert ema and all(k.endswith(("lora_a", "lora_b")) for k in ema)  # EMA follows the trainable adapters
    expected = merge_lora_state_dict({**ckpt, **ema}, 8 / 4)
    model, _ = load_model(tmp_path / "run/generator.safetensors", dtype=torch.float32)
    sd = model.state_dict()
    assert sd.keys() == expected.keys()
    for k in sd:
        torch.testing.assert_close(sd[k], expected[k].float(), rtol=0, atol=0)
    base = random_model(cfg.model_config(), cfg.model.init_seed, cfg.model.init_scale).state_dict()
    assert not torch.equal(sd["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"])
    assert torch.equal(sd["blocks.0.norm3.weight"], base["blocks.0.norm3.weight"])
    assert not torch.equal(sd["blocks.0.cross_attn.k.weight"], base["blocks.0.cross_attn.k.weight"])


def test_official_pt_initialises_the_generator(tmp_path):
    cfg = _cfg(tmp_path)
    donor = random_model(cfg.model_config(), seed=123, scale=0.05)
    # official layout: torch.save({"generator": {"model.<wan key>": tensor}}) (selfforcing.md §6.2)
    torch.save({"generator": {f"model.{k}": v.to(torch.bfloat16) for k, v in donor.state_dict().items()}},
               tmp_path / "ode_init.pt")
    trainer = Trainer(_cfg(tmp_path, f"model.generator={tmp_path / 'ode_init.pt'}", "run.max_steps=1"))
    got = trainer.generator.state_dict()
    for k, v in donor.state_dict().items():
        assert got[k].dtype == torch.float32  # fp32 master weights for training
        torch.testing.assert_close(got[k], v.to(torch.bfloat16).float(), rtol=0, atol=0)
    # no teacher/critic given: both start from the generator's weights
    assert torch.equal(trainer.objective.teacher.state_dict()["head.head.weight"], got["head.head.weight"])


def test_export_command_from_checkpoint(tmp_path):
    import subprocess
    import sys
    from train_helpers import env
    cfg = _cfg(tmp_path, "run.max_steps=2", "run.checkpoint_every=2")
    Trainer(cfg).run()
    out = tmp_path / "again.safetensors"
    proc = subprocess.run([sys.executable, "-m", "sf_core.train", "export", "--config", str(CONFIGS / "tiny_dmd.yaml"),
                           "--out", str(out), f"run.output_dir={tmp_path / 'run'}", "stream.window=6",
                           "stream.sink=3", f"data.prompts={ROOT / 'sf_core/train/configs/tiny_prompts.txt'}"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(out)), load_file(str(tmp_path / "run/generator.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad, message", [("run.resume=/nonexistent", "run.resume")])
def test_resume_path_must_exist(tmp_path, bad, message):
    from sf_core.train.config import TrainConfigError
    with pytest.raises(TrainConfigError, match=message):
        _cfg(tmp_path, bad)


def test_precomputed_embeddings_train_without_the_text_encoder(tmp_path):
    from sf_core.train.loop import encode_prompts
    cache = tmp_path / "cache"
    cfg = _cfg(tmp_path, f"data.embeddings_cache={cache}", "run.max_steps=1")
    assert encode_prompts(cfg) == 7  # six prompts + the negative prompt
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 7
    trainer = Trainer(_cfg(tmp_path, f"data.embeddings_cache={cache}", "data.text_encoder=null", "run.max_steps=1"))
    assert trainer.embeddings.encoder is None
    trainer.run()
    assert sorted(cache.glob("*.safetensors")) == files  # nothing re-encoded
