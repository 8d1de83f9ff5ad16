"""The stream nodes' `speed` option (no ComfyUI needed)."""
import torch

from nodes.speed import DEFAULT, node_speed, speed_input, stream_forward
from nodes.handles import SFModel
from sf_core.config import StreamConfig
from sf_core.pipeline import StreamingPipeline
from sf_core.testing.tiny import TINY_DIT


def test_speed_widget_offers_the_levels_with_safe_by_default():
    choices, options = speed_input()["speed"]
    assert choices == ["off", "safe", "max"] and options["default"] == DEFAULT == "safe"


def test_node_levels_never_skip_the_last_cache_pass_and_keep_the_output(tiny_model):
    handle = SFModel(tiny_model, StreamConfig(), "tiny", torch.device("cpu"))
    for level in ("off", "safe", "max"):
        s = node_speed(level, handle)
        assert not s.skip_last_cache_pass and not s.overlap_decode
    assert stream_forward(handle, "off") is tiny_model
    assert stream_forward(handle, "safe") is stream_forward(handle, "safe"), "reused across runs"
    outs = []
    for forward in (tiny_model, stream_forward(handle, "safe")):
        pipe = StreamingPipeline(forward, StreamConfig(window=6, sink=1))
        state = pipe.start(torch.randn(1, 5, TINY_DIT.text_dim, generator=torch.Generator().manual_seed(5)),
                           32, 32, seed=1)
        outs.append([pipe.step(state).latents for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(*outs))
