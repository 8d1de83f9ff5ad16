"""Live preview encoding and the live-control mailbox (no ComfyUI needed)."""
import base64
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from nodes import live


def smooth_frames(count, height, width):
    ys, xs = np.mgrid[0:height, 0:width]
    frames = [np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 40 * i)], -1)
              for i in range(count)]
    return np.stack(frames).astype(np.uint8)  # [T, H, W, 3]


def decode(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


def test_jpeg_frames_round_trip_close_to_input():
    frames = smooth_frames(3, 40, 64)
    encoded, width, height = live.encode_jpeg_frames(torch.from_numpy(frames))
    assert (width, height) == (64, 40) and len(encoded) == 3
    for original, data in zip(frames, encoded):
        assert np.abs(decode(data) - original).mean() < 3.0


def test_large_frames_are_downscaled_keeping_aspect():
    encoded, width, height = live.encode_jpeg_frames(smooth_frames(1, 300, 1200), max_side=400)
    assert (width, height) == (400, 100)
    assert decode(encoded[0]).shape == (100, 400, 3)


def test_bad_frames_give_a_clear_error():
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\].*float32 \[2, 8, 8, 3\]"):
        live.encode_jpeg_frames(np.zeros((2, 8, 8, 3), np.float32))


def test_chunk_payload_without_a_server():
    payload = live.send_chunk_preview(7, 2, smooth_frames(2, 16, 16), fps=16, latency_ms=12.5,
                                      cache_frames=21, total_frames=24)
    assert payload["node"] == "7" and payload["chunk_index"] == 2 and len(payload["frames"]) == 2
    assert (payload["width"], payload["height"], payload["cache_frames"]) == (16, 16, 21)
    done = live.send_stream_done("7", chunks=3, total_frames=24, reason="stopped")
    assert done == {"node": "7", "prompt_id": None, "chunks": 3, "total_frames": 24, "reason": "stopped"}


def test_mailbox_only_accepts_requests_for_running_streams():
    mailbox = live.ControlMailbox()
    assert not mailbox.request_stop("3") and not mailbox.request_prompt("3", "x")
    mailbox.begin(3, chunks=10)
    assert mailbox.is_active("3") and not mailbox.stop_requested("3")
    assert mailbox.request_prompt("3", "a cat") and mailbox.request_prompt(3, "a dog")
    assert mailbox.status()["3"]["pending_prompt"] == "a dog"
    assert mailbox.take_prompt("3") == "a dog" and mailbox.take_prompt("3") is None
    assert mailbox.request_stop("3") and mailbox.stop_requested(3)
    mailbox.end("3")
    assert not mailbox.is_active("3") and mailbox.status() == {}


def test_begin_drops_requests_left_from_an_earlier_run():
    mailbox = live.ControlMailbox()
    mailbox.begin("5")
    mailbox.request_stop("5")
    mailbox.request_prompt("5", "old")
    mailbox.begin("5")
    assert not mailbox.stop_requested("5") and mailbox.take_prompt("5") is None


def test_mailbox_is_consistent_under_concurrent_requests():
    mailbox = live.ControlMailbox()
    mailbox.begin("1")
    texts = [f"p{i}" for i in range(200)]
    threads = [threading.Thread(target=mailbox.request_prompt, args=("1", t)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mailbox.take_prompt("1") in texts and mailbox.take_prompt("1") is None


def test_routes_are_not_registered_outside_comfyui():
    assert live.register_routes() is False


def test_requests_naming_another_execution_do_not_reach_the_stream():
    """Two tabs, one workflow: only the tab that queued prompt 'p1' (it names p1) steers node 12:5's stream."""
    mailbox = live.ControlMailbox()
    mailbox.begin("12:5", prompt_id="p1")  # a node inside a subgraph: its executed id is a locator path
    assert mailbox.status()["12:5"]["prompt_id"] == "p1"
    assert not mailbox.request_stop("12:5", prompt_id="p0") and not mailbox.request_prompt("12:5", "x", "p0")
    assert not mailbox.request_stop("5", prompt_id="p1")  # the same inner id at the root is another node
    assert not mailbox.stop_requested("12:5") and mailbox.steered_runs("12:5") == 0
    assert mailbox.request_prompt("12:5", "a dog", prompt_id="p1") and mailbox.take_prompt("12:5") == "a dog"
    assert mailbox.request_stop("12:5") and mailbox.stop_requested("12:5")  # scripts may omit the prompt_id
