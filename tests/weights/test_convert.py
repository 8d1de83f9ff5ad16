"""`python -m sf_core.weights.convert` on real files: every output format, dtype, stream settings, errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sf_core.weights.checkpoint import load_state_dict
from sf_core.config import ModelConfig, StreamConfig
from sf_core.weights.convert import main
from sf_core.testing.layouts import TINY, assert_same, diffusers_name, random_sd, wan_vae_keys, write_layout

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_official_pt_to_sf_bf16_with_stream_settings(tmp_path, capsys):
    sd = random_sd()
    src = write_layout("official_pt_ema", sd, tmp_path)
    out = tmp_path / "sf.safetensors"
    rc, stdout, _ = run(capsys, src, out, "--dtype", "bf16", "--chunk-frames", "1", "--steps", "1000,500",
                        "--shift", "3", "--window", "12", "--sink", "3")
    assert rc == 0
    loaded, meta = load_state_dict(out)
    assert_same(loaded, {k: v.to(torch.bfloat16) for k, v in sd.items()})
    assert StreamConfig.from_metadata(meta) == StreamConfig(chunk_frames=1, denoising_steps=(1000.0, 500.0),
                                                            shift=3.0, window=12, sink=3)
    assert ModelConfig.from_json(meta["sf_model"]) == TINY
    params = sum(v.numel() for v in sd.values())
    assert stdout.count("\n") == 1
    assert f"{len(sd)} tensors" in stdout and f"{params:,} params" in stdout and "bf16" in stdout
    assert str(out) in stdout and "chunk_frames=1" in stdout and "generator_ema" not in stdout


def test_round_trip_through_every_format(tmp_path, capsys):
    sd = random_sd()
    stream = ("--chunk-frames", "1", "--steps", "1000,750,500,250", "--shift", "5", "--window", "-1", "--sink", "0")
    src = write_layout("comfy_full_checkpoint", sd, tmp_path)
    assert run(capsys, src, tmp_path / "a.safetensors", "--format", "sf", *stream)[0] == 0
    assert run(capsys, tmp_path / "a.safetensors", tmp_path / "diffusers", "--format", "diffusers")[0] == 0
    rc, stdout, _ = run(capsys, tmp_path / "diffusers", tmp_path / "ar.safetensors", "--format", "comfy-ar")
    assert rc == 0 and "causal_ar" in stdout and "fp32" in stdout
    with safe_open(str(tmp_path / "diffusers" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(diffusers_name(k) for k in sd)
    loaded, meta = load_state_dict(tmp_path / "ar.safetensors")
    assert_same(loaded, sd)
    assert json.loads(meta["config"])["transformer"]["causal_ar"] is True
    # stream settings given at the first step survive the two later conversions
    assert StreamConfig.from_metadata(meta).chunk_frames == 1


def test_unset_stream_options_come_from_input_metadata(tmp_path, capsys):
    src = write_layout("wan_single", random_sd(), tmp_path)
    assert run(capsys, src, tmp_path / "a.safetensors", "--window", "9", "--sink", "3", "--no-warp")[0] == 0
    assert run(capsys, tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--shift", "7")[0] == 0
    stream = StreamConfig.from_metadata(load_state_dict(tmp_path / "b.safetensors")[1])
    assert (stream.window, stream.sink, stream.shift, stream.warp_denoising_step) == (9, 3, 7.0, False)
    assert stream.chunk_frames == 3  # official default


def test_fp16_output_of_a_sharded_model(tmp_path, capsys):
    sd = random_sd()
    src = write_layout("wan_sharded_folder", sd, tmp_path)
    assert run(capsys, src, tmp_path / "out" / "m.safetensors", "--dtype", "fp16")[0] == 0
    assert_same(load_state_dict(tmp_path / "out" / "m.safetensors")[0], {k: v.half() for k, v in sd.items()})


def test_errors_are_reported_with_the_file(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    rc, _, err = run(capsys, missing, tmp_path / "o.safetensors")
    assert rc == 1 and str(missing) in err and "no such file" in err
    vae = tmp_path / "vae.safetensors"
    from safetensors.torch import save_file
    save_file(wan_vae_keys(), vae)
    rc, _, err = run(capsys, vae, tmp_path / "o.safetensors")
    assert rc == 1 and "models/vae" in err
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "1000,abc"], "--steps: expected comma-separated numbers"),
    (["--steps", "2000"], "timesteps in [0, 1000]"),
    (["--window", "3", "--sink", "1"], "--window 3 must be -1 or at least chunk frames + sink (3 + 1)"),
    (["--chunk-frames", "0"], "invalid stream settings (options, else the input's sf_stream metadata): "
                              "chunk_frames=0 (expected an integer >= 1)"),
    (["--shift", "nan"], "shift=nan (expected a finite number > 0)"),
])
def test_bad_stream_options(argv, message, tmp_path):
    src = write_layout("wan_single", random_sd(), tmp_path)
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        main([str(src), str(tmp_path / "o.safetensors"), *argv])
    assert not (tmp_path / "o.safetensors").exists()


def test_module_is_runnable_with_complete_help():
    result = subprocess.run([sys.executable, "-m", "sf_core.weights.convert", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for option in ("--format", "--dtype", "--chunk-frames", "--steps", "--shift", "--window", "--sink",
                   "--context-noise", "--no-warp", "comfy-ar", "diffusers", "bf16", "weights_only"):
        assert option in result.stdout, option
