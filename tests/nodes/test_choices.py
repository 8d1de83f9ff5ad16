"""Explicit stream-setting choices (legacy 0 / -1 values still accepted), queue-time validation, and the
steered-run counter behind IS_CHANGED (no ComfyUI needed)."""
import pytest

from nodes import live
from nodes.choices import CACHE_SINK, CACHE_WINDOW, CHUNK_FRAMES, STEPS
from nodes.stream import SFStreamExtend, SFStreamSampler, _num_chunks, stream_config_for
from nodes.validation import length_problem, size_problem
from sf_core.config import StreamConfig

VALID = dict(width=832, height=480, length=5.0, length_unit="seconds", fps=16.0, chunk_frames="checkpoint",
             steps="checkpoint", cache_window="checkpoint", cache_sink="checkpoint")


def test_menus_start_with_the_named_choices_and_map_legacy_values():
    assert CACHE_WINDOW.options()[:3] == ["checkpoint", "global", "6"]
    assert CACHE_WINDOW.widget()[1]["default"] == "checkpoint"
    assert [CACHE_WINDOW.parse(v) for v in (0, -1, 21, "21", "global")] == ["checkpoint", "global", 21, 21, "global"]
    assert [CACHE_SINK.parse(v) for v in (-1, 0, "3")] == ["checkpoint", 0, 3]
    assert [CHUNK_FRAMES.parse(v) for v in (0, "checkpoint", 5)] == ["checkpoint", "checkpoint", 5]
    assert STEPS.parse(13) == 13  # any whole number from the API, not only the menu's


@pytest.mark.parametrize("choice, value, message", [
    (CACHE_WINDOW, -2, r"cache_window: -2 is below 1"),
    (CACHE_SINK, -3, r"cache_sink: -3 is below 0"),
    (STEPS, "lots", r"steps: 'lots' is neither one of \['checkpoint'\] nor a whole number"),
    (CHUNK_FRAMES, 2.5, r"chunk_frames: 2.5 is neither"),
])
def test_bad_choices_name_the_input(choice, value, message):
    with pytest.raises(ValueError, match=message):
        choice.parse(value)


def test_new_and_legacy_values_give_the_same_config():
    base = StreamConfig(chunk_frames=3, window=21, sink=3)
    assert stream_config_for(base, "checkpoint", "checkpoint", "checkpoint", "checkpoint") == \
        stream_config_for(base, 0, 0, 0, -1) == base
    assert stream_config_for(base, "1", "2", "global", "checkpoint") == stream_config_for(base, 1, 2, -1, -1)
    assert stream_config_for(base, "checkpoint", "checkpoint", "global", "checkpoint").window == -1


def test_sampler_validation_accepts_good_values_and_linked_inputs():
    assert SFStreamSampler.VALIDATE_INPUTS(**VALID) is True
    assert SFStreamSampler.VALIDATE_INPUTS(**{**VALID, "chunk_frames": 0, "cache_window": -1, "cache_sink": -1})
    assert SFStreamSampler.VALIDATE_INPUTS() is True  # linked inputs arrive as None: checked when the node runs
    assert SFStreamExtend.VALIDATE_INPUTS(length=2, length_unit="chunks") is True


@pytest.mark.parametrize("change, message", [
    ({"length": 0.0}, "length 0 seconds at 16 fps makes no frame"),
    ({"length": 0.02}, "length 0.02 seconds at 16 fps makes no frame"),
    ({"length": 0.4, "length_unit": "chunks"}, "length 0.4 chunks makes no chunk"),
    ({"width": 840}, "width 840 is not a multiple of 16"),
    ({"height": 0}, "height 0 is not a multiple of 16 between 16 and 4096"),
    ({"fps": 0.0}, "fps 0 is outside 1..120"),
    ({"cache_sink": "-5"}, "cache_sink: -5 is below 0"),
])
def test_sampler_validation_rejects_what_cannot_make_a_frame(change, message):
    problem = SFStreamSampler.VALIDATE_INPUTS(**{**VALID, **change})
    assert problem.startswith(message), problem


def test_extend_validation_without_fps_and_the_run_time_check():
    assert SFStreamExtend.VALIDATE_INPUTS(length=0.0, length_unit="seconds") == \
        "length 0 seconds makes no frame; ask for at least one frame"
    assert length_problem(0.01, "seconds") is None  # fps unknown at validation: checked when the node runs
    with pytest.raises(ValueError, match="length 0.01 seconds at 16 fps makes no frame"):
        _num_chunks(0.01, "seconds", 16.0, (9, 12), lead_frames=0)
    assert size_problem(None, 480) is None


def test_steered_runs_count_once_per_run_with_a_live_request():
    mailbox = live.ControlMailbox()
    mailbox.begin("4")
    assert mailbox.steered_runs("4") == 0
    mailbox.end("4")
    assert mailbox.steered_runs(4) == 0  # an untouched run: ComfyUI may serve the next identical queue from cache
    mailbox.begin("4")
    assert mailbox.request_prompt("4", "a cat") and mailbox.request_stop("4")
    mailbox.end("4")
    assert mailbox.steered_runs("4") == 1 and mailbox.steered_runs("5") == 0
