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
        assert not s.skip_last_cache_pass and not s.overlap_decode and not s.fp8 and s.attention is None
    assert stream_forward(handle, "off") is tiny_model
    assert stream_forward(handle, "safe") is stream_forward(handle, "safe"), "reused across runs"
    outs = []
    for forward in (tiny_model, stream_forward(handle, "safe")):
        pipe = StreamingPipeline(forward, StreamConfig(window=6, sink=1))
        state = pipe.start(torch.randn(1, 5, TINY_DIT.text_dim, generator=torch.Generator().manual_seed(5)),
                           32, 32, seed=1)
        outs.append([pipe.step(state).latents for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_sampler_and_extend_validate_the_menu_and_accept_graphs_saved_before_it():
    from nodes.stream import SFStreamExtend, SFStreamSampler
    assert SFStreamSampler.VALIDATE_INPUTS(speed="") is True and SFStreamSampler.VALIDATE_INPUTS(speed="max") is True
    assert "speed: 'turbo'" in SFStreamSampler.VALIDATE_INPUTS(speed="turbo")
    assert SFStreamExtend.VALIDATE_INPUTS(length=2, length_unit="chunks", speed="stream") is True
    assert SFStreamSampler.INPUT_TYPES()["optional"]["speed"][1]["default"] == "safe"
    assert SFStreamExtend.INPUT_TYPES()["optional"]["speed"][1]["default"] == "stream"


def test_a_stream_runs_at_its_own_level_or_the_default():
    from nodes.handles import SFStream
    from nodes.speed import stream_level
    make = lambda info: SFStream(None, None, None, None, StreamConfig(), 16.0, info=info)  # noqa: E731
    assert stream_level(make({"speed": "max"})) == "max"
    assert stream_level(make({})) == stream_level(make({"speed": ""})) == "safe"
