"""Shared fixtures: tiny models in the exact Wan2.1 layout."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sf_core.model import CausalWanModel  # noqa: E402
from sf_core.testing.tiny import TINY_DIT, randomize  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest single-threaded, and CI machines have two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config():
    return TINY_DIT


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return randomize(CausalWanModel(TINY_DIT, attention="sdpa")).eval()
