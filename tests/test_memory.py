"""sf_core.memory: closed-form sizes are exact, traced peaks match measured ones, the command and fit check."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from sf_core import memory
from sf_core.config import WAN_1_3B, WAN_14B
from sf_core.weights.checkpoint import wan_param_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("config", [WAN_1_3B, WAN_14B])
def test_parameter_count_matches_the_checkpoint_layout(config):
    assert memory.dit_parameters(config) == sum(math.prod(s) for s in wan_param_shapes(config).values())


def test_kv_cache_of_21_frames_at_832x480_bf16():
    assert memory.kv_cache_bytes(WAN_1_3B, 52 * 30, 21, 1, torch.bfloat16) == 6_038_323_200
    assert memory.cross_cache_bytes(WAN_1_3B, 1, torch.bfloat16) == 2 * 30 * 512 * 1536 * 2


def test_rolling_window_sizes_the_cache_not_the_stream():
    rolling = memory.estimate_inference(WAN_1_3B, window=9, sink=3, frames=10_000, decoder="taehv",
                                        text_encoder="cpu")
    assert rolling["cache_frames"] == 9
    assert rolling["kv_cache"] == memory.kv_cache_bytes(WAN_1_3B, 1560, 9, 1, torch.bfloat16)
    assert rolling["text_encoder"] == 0
    assert rolling["total_peak"] == rolling["stream_peak"] > rolling["kv_cache"] + rolling["weights"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sf_core.memory", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_command_prints_integer_bytes_as_json():
    res = _cli("--config", "wan-1.3b", "--height", "480", "--width", "832", "--window", "21", "--sink", "3",
               "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert all(isinstance(out[k], int) for k in memory.KEYS)
    assert out["kv_cache"] == 6_038_323_200 and out["weights"] == 2 * 1_418_996_800
    assert out["total_peak"] == max(out["encode_peak"], out["stream_peak"])
    assert out["text_encoder"] > 10 * 1024 ** 3  # umT5-XXL, 5.7 B parameters in bf16


def test_command_rejects_a_bad_size_in_one_line():
    res = _cli("--height", "470", "--json")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "multiples of 16" in res.stderr


def test_fit_check_names_the_need_the_device_and_the_remedies(monkeypatch):
    est = memory.estimate_inference(WAN_1_3B, frames=21, decoder="taehv", text_encoder="cpu")
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: est["total_peak"] - 1)
    with pytest.raises(memory.MemoryPlanError, match=r"needs .* GiB .*has .* GiB free; use --window 21"):
        memory.check_fits(est, "cuda", window=-1)
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: est["total_peak"])
    memory.check_fits(est, "cuda", window=-1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dit", "wan"])
def test_traced_peak_is_within_10_percent_of_the_measured_rss_peak(kind):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "sf_core.testing.measured", kind], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["measured"] > 100e6  # large enough that page rounding and allocator noise do not matter
    assert abs(out["estimated"] - out["measured"]) <= 0.10 * out["measured"], out
