"""Live preview events and live control (interrupt, stop, prompt switch) through a real server."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

NODE = "1"


def pattern_graph(chunks, frames_per_chunk=3, width=64, height=48, chunk_seconds=0.0, text="e2e"):
    return {NODE: {"class_type": "SFPreviewTestPattern", "inputs": {
        "text": text, "width": width, "height": height, "chunks": chunks,
        "frames_per_chunk": frames_per_chunk, "fps": 8.0, "chunk_seconds": chunk_seconds}}}


def events(messages, event_type, prompt_id):
    return [m for m in messages if m.type == event_type and m.prompt_id == prompt_id]


def decode(frame_b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(frame_b64))).convert("RGB"))


def report_of(comfy, prompt_id):
    return comfy.history(prompt_id)["outputs"][NODE]["text"][0]


def start_stream(comfy, chunks=200, chunk_seconds=0.2, **kwargs):
    """Queue a long stream and return (prompt_id, message index just after its chunk 1 arrived)."""
    start = len(comfy.messages)
    prompt_id = comfy.post_prompt(pattern_graph(chunks, chunk_seconds=chunk_seconds, **kwargs))
    chunk_1 = comfy.wait_until(lambda m: m.type == "sf.stream.chunk" and m.prompt_id == prompt_id
                               and m.data["chunk_index"] == 1, timeout=60, start=start)
    return prompt_id, comfy.messages.index(chunk_1) + 1


def test_one_preview_event_per_chunk_in_order_before_the_node_finishes(comfy):
    chunks, frames_per_chunk = 4, 3
    prompt_id = comfy.post_prompt(pattern_graph(chunks, frames_per_chunk))
    messages = comfy.wait_for(prompt_id)
    assert messages[-1].type == "execution_success", messages[-1]

    chunk_events = events(messages, "sf.stream.chunk", prompt_id)
    assert [m.data["chunk_index"] for m in chunk_events] == list(range(chunks))
    assert all(m.data["node"] == NODE for m in chunk_events)
    assert [m.data["total_frames"] for m in chunk_events] == [frames_per_chunk * (i + 1) for i in range(chunks)]
    executed = next(i for i, m in enumerate(messages) if m.type == "executed" and m.data["node"] == NODE)
    assert messages.index(chunk_events[-1]) < executed

    frames = [decode(f) for m in chunk_events for f in m.data["frames"]]
    assert len(frames) == chunks * frames_per_chunk
    assert all(frame.shape == (48, 64, 3) for frame in frames)
    assert (chunk_events[0].data["width"], chunk_events[0].data["height"]) == (64, 48)
    moving = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, frames[1:])]
    assert min(moving) > 1.0, "consecutive preview frames should differ (moving pattern)"

    done = events(messages, "sf.stream.done", prompt_id)
    assert len(done) == 1 and done[0].data["reason"] == "finished"
    assert done[0].data["total_frames"] == chunks * frames_per_chunk
    progress = [m.data["value"] for m in events(messages, "progress", prompt_id) if m.data["node"] == NODE]
    # one update per chunk; current ComfyUI (0.33) throttles the ones between the first and the last
    assert progress[0] == 1 and progress[-1] == chunks and progress == sorted(set(progress))
    assert progress == list(range(1, chunks + 1)) or not comfy.host.primary, progress
    assert report_of(comfy, prompt_id).startswith(f"finished: {chunks}/{chunks} chunks")


def test_interrupt_mid_stream_stops_within_one_chunk(comfy):
    prompt_id, interrupted_at = start_stream(comfy)
    comfy.interrupt()
    messages = comfy.wait_for(prompt_id)
    assert messages[-1].type == "execution_interrupted", messages[-1]
    chunk_events = events(messages, "sf.stream.chunk", prompt_id)
    late = [m for m in comfy.messages[interrupted_at:] if m in chunk_events]
    assert len(late) <= 1, f"{len(late)} chunks arrived after the interrupt"
    assert [m.data["chunk_index"] for m in chunk_events] == list(range(len(chunk_events)))
    done = events(messages, "sf.stream.done", prompt_id)
    assert len(done) == 1 and done[0].data["reason"] == "interrupted"
    assert comfy.history(prompt_id)["status"]["status_str"] == "error"


def test_stop_route_finishes_the_current_chunk_and_succeeds(comfy):
    prompt_id, stopped_at = start_stream(comfy)
    status, body = comfy.request("POST", "/sf/stop", {"node": NODE})
    assert status == 200 and body["ok"], body
    messages = comfy.wait_for(prompt_id)
    assert messages[-1].type == "execution_success", messages[-1]
    chunk_events = events(messages, "sf.stream.chunk", prompt_id)
    assert len([m for m in comfy.messages[stopped_at:] if m in chunk_events]) <= 1
    produced = len(chunk_events)
    done = events(messages, "sf.stream.done", prompt_id)
    assert done[0].data["reason"] == "stopped" and done[0].data["chunks"] == produced
    assert report_of(comfy, prompt_id).startswith(f"stopped: {produced}/200 chunks, {produced * 3} frames")


def test_prompt_switch_route_reaches_the_running_node(comfy):
    prompt_id, _ = start_stream(comfy)
    status = comfy.get_json("/sf/status")
    assert NODE in status["streams"] and "SFPreviewTestPattern" in status["preview_node_types"]
    code, body = comfy.request("POST", "/sf/prompt", {"node": NODE, "text": "a red fox"})
    assert code == 200 and body["ok"], body
    comfy.wait_until(lambda m: m.type == "sf.stream.chunk" and m.prompt_id == prompt_id
                     and m.data["chunk_index"] >= 3, timeout=60)
    comfy.request("POST", "/sf/stop", {"node": NODE})
    messages = comfy.wait_for(prompt_id)
    assert messages[-1].type == "execution_success"
    assert "prompt switches: chunk " in report_of(comfy, prompt_id)
    assert "'a red fox'" in report_of(comfy, prompt_id)


def test_control_routes_reject_bad_requests(comfy):
    code, body = comfy.request("POST", "/sf/stop", {"node": "999"})
    assert code == 409 and "not streaming" in body["error"]
    code, _ = comfy.request("POST", "/sf/stop", {"nope": 1})
    assert code == 400
    code, _ = comfy.request("POST", "/sf/prompt", {"node": NODE, "text": ""})
    assert code == 400
