"""`python -m sf_core.train estimate`: FSDP2 on a fake process group under FakeTensorMode, per-rank bytes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sf_core.config import WAN_1_3B, WAN_14B
from sf_core.memory import dit_parameters
from sf_core.train.config import load_config
from sf_core.train.estimate import score_config

from train_helpers import CONFIGS, ROOT, env

KEYS = ("per_rank_peak", "parameters", "gradients", "optimizer", "activations", "rollout_cache", "text_encoder")


def _estimate(world: int, *overrides: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "sf_core.train", "estimate", "--config",
                          str(CONFIGS / "tiny_dmd.yaml"), "--world-size", str(world), "--json", *overrides],
                         cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def one_rank():
    return _estimate(1)


def test_the_breakdown_adds_up_to_the_peak(one_rank):
    assert all(isinstance(one_rank[k], int) for k in KEYS)
    assert one_rank["per_rank_peak"] == sum(one_rank[k] for k in KEYS[1:])
    assert one_rank["activations"] > 0 and one_rank["peak_phase"] in ("generator", "critic")
    assert one_rank["per_rank_peak"] == max(one_rank["generator_update_peak"], one_rank["critic_update_peak"])


def test_adamw_state_is_two_float32_moments_of_each_trainable(one_rank):
    mc = load_config(CONFIGS / "tiny_dmd.yaml", check_files=False).model_config()
    trainable = 2 * dit_parameters(mc)  # generator and critic; the teacher is frozen
    assert one_rank["optimizer"] == 2 * 4 * trainable
    # resident: float32 generator, critic, EMA shadow, float32 teacher (tiny config), plus gathered copies
    assert one_rank["parameters"] >= 4 * 4 * dit_parameters(mc)


def test_sharding_over_more_ranks_lowers_the_per_rank_state(one_rank):
    four = _estimate(4)
    assert four["optimizer"] < one_rank["optimizer"] / 2 and four["parameters"] < one_rank["parameters"]


def test_score_model_shapes_follow_the_files_names():
    assert score_config("wan_models/Wan2.1-T2V-14B", WAN_1_3B) == WAN_14B
    assert score_config("wan_models/Wan2.1-T2V-1.3B", WAN_14B) == WAN_1_3B
    assert score_config(None, WAN_1_3B) == WAN_1_3B
