"""The CLI's memory plan: `--plan`, the one-line summary, and the fit check that stops a run before loading."""
from __future__ import annotations

import pytest
import torch

from sf_core import memory
from sf_core.generate import cli, memory_plan
from sf_core.testing.tiny import make_tiny_models_dir
from sf_core.vae.wan import VAEConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_tiny_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture
def args(files, tmp_path):
    return ["--checkpoint", str(files["checkpoint"]), "--text-encoder", str(files["text_encoder"]),
            "--vae", str(files["vae"]), "--width", "32", "--height", "32", "--out", str(tmp_path / "o.mp4")]


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the bundle was loaded")
    monkeypatch.setattr(cli, "load_bundle", refuse)


def test_plan_prints_the_table_of_the_files_shapes_and_exits(args, tmp_path, capsys, no_loading):
    assert cli.main(args + ["--plan"]) == 0
    out = capsys.readouterr().out
    assert "kv cache" in out and "total peak" in out and out.rstrip().endswith("fits")
    assert not (tmp_path / "o.mp4").exists()


def test_the_plan_reads_the_files_own_shapes(files):
    plan = cli.resolve(cli.build_parser().parse_args(
        ["--checkpoint", str(files["checkpoint"]), "--text-encoder", str(files["text_encoder"]),
         "--vae", str(files["vae"]), "--width", "32", "--height", "32", "--dtype", "float32"]))
    est = memory_plan.for_plan(plan)
    dit = memory.config_of_checkpoint(files["checkpoint"])
    assert est["weights"] == memory.dit_parameters(dit) * 4
    assert est["kv_cache"] == memory.kv_cache_bytes(dit, 4, 21, 1, torch.float32)  # 2×2 tokens, 7 chunks
    assert est["text_encoder"] < 1e6  # the tiny umT5 of the file, not umT5-XXL
    assert memory_plan._decoder_config("wan", files["vae"])[1] != VAEConfig()


def test_a_cache_that_cannot_fit_fails_before_loading_in_one_line(args, tmp_path, capsys, no_loading):
    assert cli.main(args + ["--chunks", "100000000", "--window", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: this run needs ") and "GiB free; use --window 21" in err
    assert not (tmp_path / "o.mp4").exists()


def test_the_check_compares_with_the_devices_free_memory(args, monkeypatch, capsys, no_loading):
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: 1000)
    assert cli.main(args) == 2
    assert "the device cpu has 0.00 GiB free" in capsys.readouterr().err
