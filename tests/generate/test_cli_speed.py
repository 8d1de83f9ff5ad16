"""`--speed off|safe|max` and the speed switches of `python -m sf_core.generate`: printed, refused when the
device cannot run them, and output-preserving where they say so."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from sf_core.generate import cli as generate
from sf_core.testing.tiny import make_tiny_models_dir

SIZE = ["--width", "32", "--height", "32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_tiny_models_dir(tmp_path_factory.mktemp("models"))


def _args(files, *extra):
    return ["--checkpoint", str(files["checkpoint"]), "--text-encoder", str(files["text_encoder"]),
            "--vae", str(files["vae"]), "--prompt", "A red fox runs", "--seed", "2", "--chunks", "3", *SIZE, *extra]


def _frames(folder) -> list[np.ndarray]:
    return [np.asarray(Image.open(folder / n)) for n in sorted(os.listdir(folder))]


def test_every_output_preserving_level_writes_the_same_frames(files, tmp_path, capsys):
    runs = {"off": ["--speed", "off"], "safe": [], "safe+overlap": ["--overlap-decode"],
            "max-fast-parts-off": ["--speed", "max", "--rope", "exact"]}
    for name, extra in runs.items():
        assert generate.main(_args(files, *extra, "--out", str(tmp_path / f"{name}.mp4"),
                                   "--png-dir", str(tmp_path / name))) == 0, name
    err = capsys.readouterr().err
    assert "speed: safe: final cache pass skipped; output identical to --speed off; cuda graphs: off" in err
    assert "speed: off: plain path" in err
    ref = _frames(tmp_path / "off")
    assert len(ref) == 33
    for name in runs:  # on a CPU max = safe + fast RoPE; with --rope exact nothing else changes the output
        assert all(np.array_equal(a, b) for a, b in zip(ref, _frames(tmp_path / name))), name


def test_dry_run_prints_the_speed_choice_and_max_says_it_changes_the_output(files, tmp_path, capsys):
    assert generate.main(_args(files, "--speed", "max", "--dry-run", "--out", str(tmp_path / "n.mp4"))) == 0
    text = capsys.readouterr().out
    assert "speed: max: final cache pass skipped, rope fast; output within bf16 tolerance" in text
    assert "compile: off (on a CPU" in text and not (tmp_path / "n.mp4").exists()


@pytest.mark.parametrize("flag, message", [("--cuda-graphs", "need a CUDA device"),
                                           ("--speed=turbo", "invalid choice")])
def test_switches_the_device_cannot_run_are_one_line_errors(files, tmp_path, capsys, flag, message):
    if flag == "--cuda-graphs" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    try:
        code = generate.main(_args(files, flag, "--device", "cpu", "--out", str(tmp_path / "n.mp4")))
    except SystemExit as exc:  # argparse rejects unknown choices itself
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "n.mp4").exists()


def test_decoder_taehv_is_the_tiny_decoder(files, tmp_path, capsys):
    assert generate.main(["--models-dir", str(files["root"]), "--decoder", "taehv", *SIZE, "--dry-run"]) == 0
    assert "decoder: taehv:" in capsys.readouterr().out


def test_a_saved_stream_keeps_its_last_cache_pass(files, tmp_path, capsys):
    assert generate.main(_args(files, "--save-state", str(tmp_path / "s.safetensors"), "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "speed: safe: plain path" in out and "skipped" not in out
