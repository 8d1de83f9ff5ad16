"""Config files, overrides and validation errors."""
from __future__ import annotations

import pytest

from sf_core.train.config import TrainConfigError, load_config, parse_override
from sf_core.train.objectives import ObjectiveConfig

from train_helpers import CONFIGS, ROOT

SHIPPED = sorted(p.name for p in CONFIGS.glob("*.yaml"))


def test_dmd_config_has_the_official_hyper_parameters():
    cfg = load_config(CONFIGS / "self_forcing_dmd.yaml", check_files=False)
    o = cfg.optim
    assert (o.lr_generator, o.lr_critic) == (2e-6, 4e-7)
    assert o.betas_generator == o.betas_critic == (0.0, 0.999)
    assert (o.weight_decay_generator, o.grad_clip_generator, o.grad_clip_critic) == (0.01, 10.0, 10.0)
    assert (cfg.ema.decay, cfg.ema.start_step) == (0.99, 200)
    assert (cfg.data.latent_frames, cfg.data.latent_height, cfg.data.latent_width) == (21, 60, 104)
    obj = ObjectiveConfig.from_dict(cfg.objective_options())
    assert obj.critic_updates_per_generator == 5 and obj.guidance_scale == 3.0
    assert obj.latent_shape == (21, 16, 60, 104) and obj.chunk_frames == 3 and obj.shift == 5.0
    assert (obj.min_step, obj.max_step) == (20, 980) and obj.gradient_checkpointing


def test_sid_config_inherits_and_really_selects_sid():
    cfg = load_config(CONFIGS / "self_forcing_sid.yaml", check_files=False)
    assert cfg.objective.name == "sid" and cfg.optim.lr_critic == 2e-6 and cfg.optim.weight_decay_critic == 0.0
    assert cfg.model.teacher.endswith("1.3B") and cfg.optim.lr_generator == 2e-6


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_builds_a_valid_objective_config(name):
    needs = {"gan": ["data.latents=x"], "ode": ["data.ode_pairs=x"], "teacher_forcing": ["data.latents=x"],
             "diffusion_forcing": ["data.latents=x"]}
    extra = next((v for k, v in needs.items() if name == f"tiny_{k}.yaml"), [])
    cfg = load_config(CONFIGS / name, extra, check_files=False)
    assert ObjectiveConfig.from_dict(cfg.objective_options()).latent_shape[0] == cfg.data.latent_frames


def test_overrides_parse_values_and_nest():
    cfg = load_config(CONFIGS / "tiny_dmd.yaml", ["optim.lr_generator=1e-5", "optim.betas_critic=[0.5, 0.9]",
                                                  "ema.enabled=false", "objective.options.guidance_scale=6",
                                                  "run.output_dir=/tmp/x"], check_files=False)
    assert cfg.optim.lr_generator == 1e-5 and cfg.optim.betas_critic == (0.5, 0.9)
    assert cfg.ema.enabled is False and cfg.objective.options["guidance_scale"] == 6
    assert cfg.objective.options["critic_updates_per_generator"] == 2  # file value kept beside the override
    assert parse_override("a.b=null") == (["a", "b"], None)


def test_toml_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\nmax_steps = 7\n[optim]\nlr_critic = 1e-4\n[data]\nprompts = "p.txt"\n')
    cfg = load_config(path, check_files=False)
    assert cfg.run.max_steps == 7 and cfg.optim.lr_critic == 1e-4 and cfg.optim.lr_generator == 2e-6


@pytest.mark.parametrize("overrides, message", [
    (["optim.grad_accum=0"], "optim.grad_accum: must be >= 1"),
    (["optim.lr_generatr=1"], "unknown key(s) ['lr_generatr']"),
    (["optim.betas_generator=[0.9]"], "expected a list of 2 values"),
    (["ema.enabled=maybe"], "ema.enabled: expected true/false"),
    (["data.latent_frames=7"], "not a multiple of stream.chunk_frames"),
    (["objective.name=dpo"], "unknown objective 'dpo'"),
    (["distributed.strategy=zero3"], "choose auto, fsdp, ddp or none"),
    (["model.config.num_heads=3"], "dim 128 is not divisible by num_heads 3"),
    (["objective.name=ode"], "data.ode_pairs"),
    (["data.prompts=/nonexistent/prompts.txt"], "file /nonexistent/prompts.txt does not exist"),
    (["optim"], "expected key.sub=value"),
])
def test_validation_errors_name_the_key(overrides, message, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's relative paths are relative to the working directory
    with pytest.raises(TrainConfigError) as err:
        load_config(CONFIGS / "tiny_dmd.yaml", overrides)
    assert message in str(err.value)


def test_real_recipe_without_files_says_which_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainConfigError, match="model.generator: file checkpoints/ode_init.pt does not exist"):
        load_config(CONFIGS / "self_forcing_dmd.yaml")


def test_missing_config_file(tmp_path):
    with pytest.raises(TrainConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
