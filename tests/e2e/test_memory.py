"""Memory in a real ComfyUI server: our models live in comfy.model_management like core's, and a long stream
keeps the server's resident memory flat (tests/e2e/tiny_files.py weights)."""
from __future__ import annotations

import statistics
import threading
import time
import uuid

import av
import pytest

from e2e.tiny_files import DIT_SAFETENSORS, TEXT_ENCODER, TINY_DECODER, VAE

pytestmark = pytest.mark.e2e

OURS = {"CausalWanModel", "WanVAE", "UMT5Encoder"}  # DiT, VAE and umT5 of sf_core
LONG_FRAMES = 2001        # 9 + 166 · 12: 167 chunks
LONG_SIZE = 256           # one float32 IMAGE frame: 256·256·3·4 B = 0.79 MB; all 2001 would be 1.57 GB
KEPT_BETWEEN = LONG_FRAMES // 2 * LONG_SIZE * LONG_SIZE * 3 * 4  # IMAGE bytes made between the two medians
RSS_BOUND = 128 * 2 ** 20  # allowed growth of the median RSS from the 2nd to the 4th quarter (≈ 1/6 of that)


def stream_graph(tag: str, size: int, length: int, unit: str, vae: str, record: str = "none") -> dict:
    return {
        "1": {"class_type": "SFModelLoader", "inputs": {"model_name": DIT_SAFETENSORS, "dtype": "default",
                                                         "attention": "auto"}},
        "2": {"class_type": "SFTextEncoderLoader", "inputs": {"text_encoder_name": TEXT_ENCODER, "device": "auto"}},
        "3": {"class_type": "SFTextEncode", "inputs": {"sf_text_encoder": ["2", 0], "prompt": "a fox in the snow"}},
        "4": {"class_type": "SFVAELoader", "inputs": {"vae_name": vae, "dtype": "default",
                                                       "tiny_decoder_mode": "memory"}},
        "5": {"class_type": "SFStreamSampler", "inputs": {
            "sf_model": ["1", 0], "sf_context": ["3", 0], "sf_vae": ["4", 0], "width": size, "height": size,
            "length": length, "length_unit": unit, "seed": 1, "fps": 16.0, "chunk_frames": "checkpoint",
            "steps": "checkpoint", "cache_window": "checkpoint", "cache_sink": "checkpoint", "record": record,
            "filename_prefix": f"mem_{tag}/stream", "live_recache": True}},
    }


def core_vae_graph(tag: str) -> dict:
    """Core nodes only: Load VAE + VAEEncode, which loads the VAE through comfy.model_management."""
    return {
        "20": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "21": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "22": {"class_type": "VAEEncode", "inputs": {"pixels": ["21", 0], "vae": ["20", 0]}},
        "23": {"class_type": "SaveLatent", "inputs": {"samples": ["22", 0], "filename_prefix": f"mem_{tag}/core"}},
    }


def run(comfy, graph: dict):
    prompt_id = comfy.post_prompt(graph)
    messages = comfy.wait_for(prompt_id, timeout=900)
    assert messages[-1].type == "execution_success", messages[-1].data
    return prompt_id


def loaded(comfy) -> list[dict]:
    return comfy.get_json("/sf/memory")["loaded_models"]


def test_our_models_are_loaded_and_unloaded_by_comfys_memory_manager(comfy, models):
    tag = uuid.uuid4().hex[:8]
    prompt_id = run(comfy, {**core_vae_graph(tag), **stream_graph(tag, 32, 1, "chunks", VAE)})
    rows = loaded(comfy)
    ours = {r["class"] for r in rows if r["ours"]}
    core = [r for r in rows if not r["ours"]]
    assert ours == OURS, rows
    assert core and core[0]["class"] == "WanVAE", rows  # core's own Wan VAE, loaded beside ours
    assert all(r["loaded_bytes"] == r["size_bytes"] > 0 for r in rows if r["ours"]), rows
    assert "asked ComfyUI to free" in comfy.history(prompt_id)["outputs"]["5"]["text"][0]

    status, _ = comfy.request("POST", "/free", {"unload_models": True})
    assert status == 200
    deadline = time.time() + 30
    while loaded(comfy) and time.time() < deadline:
        time.sleep(0.2)
    assert loaded(comfy) == [], "ComfyUI's 'unload models' left models loaded"

    again = stream_graph(tag, 32, 1, "chunks", VAE)
    again["5"]["inputs"]["seed"] = 2  # the sampler runs again (the prompt's context is cached: no encode)
    run(comfy, again)
    assert {r["class"] for r in loaded(comfy) if r["ours"]} == {"CausalWanModel", "WanVAE"}


@pytest.mark.slow
def test_a_long_stream_keeps_the_servers_memory_flat(comfy, models):
    """2001 frames at 256×256 (167 chunks; default outputs: the last 81 frames; mp4 recording): the median RSS of
    the server in the last quarter of the stream is within RSS_BOUND of the second quarter's, while keeping every
    frame would add KEPT_BETWEEN (750 MiB) between them. RSS swings by ±50 MiB within a chunk (decode and
    encode buffers), hence medians."""
    tag = uuid.uuid4().hex[:8]
    start = len(comfy.messages)
    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            chunks = sum(1 for m in comfy.messages[start:] if m.type == "sf.stream.chunk")
            samples.append((chunks, comfy.get_json("/sf/memory")["rss_bytes"]))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        prompt_id = run(comfy, stream_graph(tag, LONG_SIZE, LONG_FRAMES, "frames", TINY_DECODER, record="mp4"))
    finally:
        done.set()
        sampler.join()
    report = comfy.history(prompt_id)["outputs"]["5"]["text"][0]
    assert f"{LONG_FRAMES} frames {LONG_SIZE}×{LONG_SIZE}" in report and "(81 frames in IMAGE)" in report, report
    recording = next(line[len("recording: "):] for line in report.splitlines() if line.startswith("recording: "))
    with av.open(recording) as container:  # the recording, not the outputs, has every frame
        assert sum(1 for _ in container.decode(video=0)) == LONG_FRAMES
    second, last = (quarter(samples, q) for q in (1, 3))
    growth = statistics.median(last) - statistics.median(second)
    print(f"\nserver RSS, median of the 2nd / 4th quarter of the stream: {statistics.median(second) / 2 ** 20:.0f} / "
          f"{statistics.median(last) / 2 ** 20:.0f} MiB ({len(second)} / {len(last)} samples), growth "
          f"{growth / 2 ** 20:.1f} MiB; keeping every frame would add {KEPT_BETWEEN / 2 ** 20:.0f} MiB")
    assert growth < RSS_BOUND, f"RSS grew {growth / 2 ** 20:.0f} MiB during the stream: {samples}"


def quarter(samples: list[tuple[int, int]], index: int) -> list[int]:
    """RSS samples taken while the stream was in its `index`-th quarter (0-based) of chunks."""
    chunks = -(-(LONG_FRAMES - 9) // 12) + 1
    found = [rss for made, rss in samples if index * chunks // 4 <= made < (index + 1) * chunks // 4]
    assert len(found) >= 4, samples
    return found
