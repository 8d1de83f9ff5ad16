"""ComfyUI's own conventions on the stream nodes, in a real server: the VIDEO output feeds core's SaveVideo, the
recording is listed in the node's UI outputs, widget values are checked when the prompt is queued (before any
model loads), saved graphs with the legacy 0 / -1 widget values still run, and an unchanged prompt is served
from ComfyUI's cache unless its last run was steered live."""
from __future__ import annotations

import json

import numpy as np
import pytest

from e2e.test_stream_nodes import _png_frames as png_frames
from e2e.test_stream_nodes import node_of, recording_of, report, run, video_frames, workflow

pytestmark = pytest.mark.e2e

FRAMES_2_CHUNKS = 9 + 12  # 3 latent frames per chunk: 9 pixel frames first, then 12


def save_video(graph: dict, source: str, prefix: str) -> str:
    graph["90"] = {"class_type": "SaveVideo", "inputs": {"video": [source, 4], "filename_prefix": prefix,
                                                         "format": "auto", "codec": "auto"}}
    return "90"


def saved_file(comfy, prompt_id, node_id):
    entry = comfy.history(prompt_id)["outputs"][node_id]["images"][0]
    return comfy.base_dir / "output" / entry["subfolder"] / entry["filename"]


@pytest.mark.parametrize("record", ["mp4", "png"])
def test_video_output_feeds_core_save_video(comfy, models, record):
    graph = workflow("t2v_stream")
    sampler = node_of(graph, "SFStreamSampler")
    graph[sampler]["inputs"]["record"] = record
    prefix = graph[sampler]["inputs"]["filename_prefix"] + "_saved"
    saver = save_video(graph, sampler, prefix)
    prompt_id, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    assert comfy.object_info()["SFStreamSampler"]["output"][-1] == "VIDEO"
    assert video_frames(saved_file(comfy, prompt_id, saver)) == FRAMES_2_CHUNKS

    outputs = comfy.history(prompt_id)["outputs"][sampler]
    if record == "mp4":  # listed like SaveVideo's file: queue / assets panels and the node's video preview
        assert outputs["animated"] == [True]
        listed = saved_file(comfy, prompt_id, sampler)
        assert listed == recording_of(report(comfy, prompt_id, sampler)) and video_frames(listed) == FRAMES_2_CHUNKS
    else:
        assert "images" not in outputs


@pytest.mark.parametrize("change, expected", [
    ({"length": 0}, "length 0 chunks makes no chunk"),
    ({"length": 0.01, "length_unit": "seconds"}, "length 0.01 seconds at 16 fps makes no frame"),
    ({"width": 40}, "width 40 is not a multiple of 16"),
    ({"cache_window": "lots"}, "cache_window: 'lots' is neither one of ['checkpoint', 'global'] nor a whole number"),
])
def test_values_that_cannot_make_a_frame_are_rejected_when_queued(comfy, models, change, expected):
    graph = workflow("t2v_stream")
    graph[node_of(graph, "SFStreamSampler")]["inputs"].update(change)
    before = len(comfy.messages)
    with pytest.raises(Exception) as rejected:
        comfy.post_prompt(graph)
    assert type(rejected.value).__name__ == "PromptRejected" and rejected.value.status == 400
    errors = rejected.value.body["node_errors"][node_of(graph, "SFStreamSampler")]["errors"]
    assert any(expected in e["details"] for e in errors), errors
    assert not any(m.type == "execution_start" for m in comfy.messages[before:])  # nothing ran, no model loaded


def test_legacy_widget_values_run_like_the_explicit_choices(comfy, models):
    """Graphs saved with the old INT widgets (0 / -1 = the checkpoint's value) make the same frames."""
    graph = workflow("t2v_stream")
    sampler = node_of(graph, "SFStreamSampler")
    inputs = graph[sampler]["inputs"]
    assert (inputs["chunk_frames"], inputs["cache_window"]) == ("checkpoint", "checkpoint")
    inputs["record"] = "png"
    legacy = json.loads(json.dumps(graph))
    legacy[sampler]["inputs"].update(chunk_frames=0, steps=0, cache_window=0, cache_sink=-1,
                                     filename_prefix=inputs["filename_prefix"] + "_legacy")
    frames = []
    for version in (graph, legacy):
        prompt_id, messages = run(comfy, version)
        assert messages[-1].type == "execution_success", messages[-1].data
        frames.append(png_frames(recording_of(report(comfy, prompt_id, sampler))))
    assert len(frames[0]) == len(frames[1]) == FRAMES_2_CHUNKS
    assert all(np.array_equal(a, b) for a, b in zip(*frames))


def test_unchanged_prompt_is_cached_unless_steered_live(comfy, models):
    graph = workflow("t2v_stream", chunks=3)
    sampler = node_of(graph, "SFStreamSampler")
    first, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    again, messages = run(comfy, graph)
    cached = [m for m in messages if m.type == "execution_cached" and m.prompt_id == again]
    assert sampler in cached[0].data["nodes"], "a fixed seed and unchanged inputs must not re-run the stream"
    assert not [m for m in messages if m.type == "sf.stream.chunk" and m.prompt_id == again]

    graph[sampler]["inputs"]["length"] = 30  # a long run, stopped live after its first chunk
    steered = comfy.post_prompt(graph)
    comfy.wait_until(lambda m: m.type == "sf.stream.chunk" and m.prompt_id == steered, timeout=300)
    status, body = comfy.request("POST", "/sf/stop", {"node": sampler})
    assert status == 200, body
    assert comfy.wait_for(steered, timeout=300)[-1].type == "execution_success"
    rerun, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    assert report(comfy, rerun, sampler).startswith("finished: 30/30 chunks"), "a stopped run is not served again"


# --- native MODEL / VAE into the stream sampler ------------------------------------------------------------------
# ComfyUI's Wan detection assumes umT5-XXL's 4096-wide text embeddings and a 256-wide time embedding, so the DiT
# for core's UNETLoader has those two widths (and a tiny umT5 of width 4096 feeds it); everything else is tiny.
NATIVE_DIT = "tiny_wan_native.safetensors"
MERGED_DIT = "tiny_wan_lora_merged.safetensors"
LORA = "tiny_wan_lora.safetensors"
WIDE_UMT5 = "tiny_umt5_4096.safetensors"
LORA_STRENGTH = 0.7
LORA_TARGETS = ("blocks.0.self_attn.q", "blocks.1.ffn.0", "head.head")


@pytest.fixture(scope="module")
def native_models(comfy, models):
    """A Wan-shaped tiny DiT without our metadata, a LoRA for it (kohya-style up/down pairs under the
    `diffusion_model.` prefix) and the same DiT with that LoRA merged by hand."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from sf_core.config import ModelConfig
    from sf_core.model import CausalWanModel
    from sf_core.testing.tiny import TINY_UMT5, make_tiny_umt5

    config = ModelConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_dim=4096, freq_dim=256)
    gen = torch.Generator().manual_seed(3)
    weights = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in CausalWanModel(config).state_dict().items()}
    lora, merged = {}, dict(weights)
    for target in LORA_TARGETS:
        out_dim, in_dim = weights[target + ".weight"].shape
        up, down = torch.randn(out_dim, 4, generator=gen) * 0.1, torch.randn(4, in_dim, generator=gen) * 0.1
        lora[f"diffusion_model.{target}.lora_up.weight"] = up
        lora[f"diffusion_model.{target}.lora_down.weight"] = down
        merged[target + ".weight"] = weights[target + ".weight"] + LORA_STRENGTH * (up @ down)
    root = comfy.base_dir / "models"
    (root / "loras").mkdir(exist_ok=True)
    save_file(weights, str(root / "diffusion_models" / NATIVE_DIT))
    save_file(merged, str(root / "diffusion_models" / MERGED_DIT))
    save_file(lora, str(root / "loras" / LORA))
    make_tiny_umt5(root / "text_encoders" / WIDE_UMT5, config=dataclasses.replace(TINY_UMT5, dim=4096, num_layers=1))


def _native_graph(model_source: dict, vae_source: dict, prefix: str) -> dict:
    graph = {
        "3": {"class_type": "SFTextEncoderLoader", "inputs": {"text_encoder_name": WIDE_UMT5, "device": "auto"}},
        "4": {"class_type": "SFTextEncode", "inputs": {"sf_text_encoder": ["3", 0], "prompt": "a red fox in snow"}},
        "6": {"class_type": "SFStreamSampler", "inputs": {
            "sf_model": ["1", 0], "sf_context": ["4", 0], "sf_vae": ["5", 0], "width": 32, "height": 32,
            "length": 2, "length_unit": "chunks", "seed": 5, "fps": 16.0, "chunk_frames": "checkpoint",
            "steps": "checkpoint", "cache_window": "checkpoint", "cache_sink": "checkpoint", "record": "png",
            "filename_prefix": prefix, "live_recache": True}},
    }
    graph.update(model_source)
    graph["5"] = vae_source
    return graph


def _stream_frames(comfy, graph) -> list:
    prompt_id, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    return png_frames(recording_of(report(comfy, prompt_id, "6")))


def test_native_model_with_a_core_lora_and_native_vae_stream_like_our_loaders(comfy, native_models):
    """UNETLoader → LoraLoaderModelOnly and VAELoader feed the sampler directly; the frames equal our loaders' on
    the same DiT with the LoRA merged by hand (and differ from the DiT without it)."""
    import uuid

    tag = uuid.uuid4().hex[:8]
    native_vae = {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}}
    our_vae = {"class_type": "SFVAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors", "dtype": "default",
                                                       "tiny_decoder_mode": "memory"}}
    native = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": NATIVE_DIT, "weight_dtype": "default"}},
              "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": LORA,
                                                                    "strength_model": LORA_STRENGTH}}}
    with_lora = _native_graph(native, native_vae, f"native_{tag}/lora")
    with_lora["6"]["inputs"]["sf_model"] = ["2", 0]
    ours = {"1": {"class_type": "SFModelLoader", "inputs": {"model_name": MERGED_DIT, "dtype": "default",
                                                            "attention": "auto"}}}
    without = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": NATIVE_DIT, "weight_dtype": "default"}}}

    native_frames = _stream_frames(comfy, with_lora)
    our_frames = _stream_frames(comfy, _native_graph(ours, our_vae, f"native_{tag}/ours"))
    plain_frames = _stream_frames(comfy, _native_graph(without, native_vae, f"native_{tag}/plain"))
    assert len(native_frames) == len(our_frames) == FRAMES_2_CHUNKS
    worst = max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(native_frames, our_frames))
    assert worst <= 1, f"native MODEL + LoRA differs from the merged file by {worst}/255"
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(native_frames, plain_frames)]) > 1, \
        "the LoRA changed nothing"
