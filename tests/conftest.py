"""Shared fixtures: tiny models in the exact Wan2.1 layout."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sf_core.config import ModelConfig  # noqa: E402
from sf_core.model import CausalWanModel  # noqa: E402

TINY = ModelConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=32,
                   freq_dim=32, text_len=16)


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere (a fresh Wan init zeroes nothing, but scale it to keep activations O(1))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest single-threaded, and CI machines have two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config():
    return TINY


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return randomize(CausalWanModel(TINY, attention="sdpa")).eval()
