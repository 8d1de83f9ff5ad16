"""SF Video To Video and SF LoRA in a real ComfyUI server: workflows, frame counts, strength 1 = text-to-video,
a trained LoRA = its merged export, strength 0 and unpatching leave the model untouched, readable errors."""
from __future__ import annotations

import copy
import json
import uuid

import pytest
import torch
from safetensors.torch import load_file, save_file

from e2e.test_stream_nodes import (SIZE, error_message, node_of, of_type, recording_of, report, run, video_frames,
                                   workflow)
from e2e.tiny_files import DIT_SAFETENSORS, LORA, LORA_MERGED

pytestmark = pytest.mark.e2e


def _latent(comfy, prompt_id, node_id) -> torch.Tensor:
    saved = comfy.history(prompt_id)["outputs"][node_id]["latents"][0]
    return load_file(str(comfy.base_dir / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def _with_saved_latent(graph: dict, source: str) -> dict:
    graph["90"] = {"class_type": "SaveLatent",
                   "inputs": {"samples": [source, 0], "filename_prefix": f"v2v_{uuid.uuid4().hex[:8]}/l"}}
    return graph


def test_zero_download_v2v_workflow_restyles_the_samplers_frames(comfy, models):
    graph = workflow("v2v_toy")  # the sampler shrunk to 2 chunks at 32×32: 9 + 12 toy frames
    v2v = node_of(graph, "SFVideoToVideo")
    prompt_id, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    text = report(comfy, prompt_id, v2v)
    assert text.startswith("finished: 2/2 chunks, 21 frames 32×32"), text
    chunks = [m for m in of_type(messages, "sf.stream.chunk", prompt_id) if m.data["node"] == v2v]
    assert [len(m.data["frames"]) for m in chunks] == [9, 12]   # previewed live, chunk by chunk
    assert video_frames(recording_of(text)) == 21


def test_v2v_lora_workflow_keeps_the_input_length_with_a_partial_last_chunk(comfy, models):
    graph = workflow("v2v_lora")   # core Load Video (26 frames at 10 fps, read a chunk at a time) → SF Video To Video
    v2v = node_of(graph, "SFVideoToVideo")
    prompt_id, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    chunks = [m for m in of_type(messages, "sf.stream.chunk", prompt_id) if m.data["node"] == v2v]
    assert [len(m.data["frames"]) for m in chunks] == [9, 12, 5]
    text = report(comfy, prompt_id, v2v)
    assert "26 frames 32×32 at 10 fps" in text, text
    assert video_frames(recording_of(text)) == 26


def test_strength_one_is_the_samplers_text_to_video(comfy, models):
    base = workflow("v2v_lora")
    v2v = copy.deepcopy(base)
    v2v["8"]["inputs"].update(strength=1.0, sf_model=["1", 0], record="none")
    del v2v["2"]
    v2v_id, messages = run(comfy, _with_saved_latent(v2v, "8"))
    assert messages[-1].type == "execution_success", messages[-1].data
    t2v = {k: copy.deepcopy(base[k]) for k in ("1", "3", "4", "5")}
    t2v["8"] = {"class_type": "SFStreamSampler", "inputs": {
        "sf_model": ["1", 0], "sf_context": ["4", 0], "sf_vae": ["5", 0], "width": SIZE, "height": SIZE,
        "length": 3, "length_unit": "chunks", "seed": base["8"]["inputs"]["seed"], "fps": 10.0,
        "chunk_frames": "checkpoint", "steps": "checkpoint", "cache_window": "checkpoint",
        "cache_sink": "checkpoint", "record": "none", "filename_prefix": "x", "live_recache": True}}
    t2v_id, messages = run(comfy, _with_saved_latent(t2v, "8"))
    assert messages[-1].type == "execution_success", messages[-1].data
    assert torch.equal(_latent(comfy, v2v_id, "90"), _latent(comfy, t2v_id, "90"))


def _t2v_with(model_name: str, lora: tuple[str, float] | None = None) -> dict:
    graph = workflow("t2v_stream")
    graph["1"]["inputs"]["model_name"] = model_name
    sampler = node_of(graph, "SFStreamSampler")
    graph[sampler]["inputs"]["record"] = "none"
    if lora is not None:
        graph["20"] = {"class_type": "SFLoRA", "inputs": {"sf_model": ["1", 0], "lora_name": lora[0],
                                                          "strength": lora[1]}}
        graph[sampler]["inputs"]["sf_model"] = ["20", 0]
    return _with_saved_latent(graph, sampler)


def _latent_of(comfy, graph) -> torch.Tensor:
    prompt_id, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    return _latent(comfy, prompt_id, "90")


def test_trained_lora_equals_its_merged_export_and_leaves_the_base_model_untouched(comfy, models):
    plain = _latent_of(comfy, _t2v_with(DIT_SAFETENSORS))
    with_lora = _latent_of(comfy, _t2v_with(DIT_SAFETENSORS, (LORA, 1.0)))
    merged = _latent_of(comfy, _t2v_with(LORA_MERGED))
    assert (with_lora - merged).abs().max() < 1e-3 * merged.abs().max()
    assert (with_lora - plain).abs().max() > 1e-2 * plain.abs().max()
    assert torch.equal(_latent_of(comfy, _t2v_with(DIT_SAFETENSORS)), plain)               # weights restored
    assert torch.equal(_latent_of(comfy, _t2v_with(DIT_SAFETENSORS, (LORA, 0.0))), plain)  # strength 0


def test_foreign_lora_and_short_input_give_readable_errors(comfy, models):
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 5120),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, 4)},
              str(comfy.base_dir / "models" / "loras" / "wan14b_lora.safetensors"))
    _, messages = run(comfy, _t2v_with(DIT_SAFETENSORS, ("wan14b_lora.safetensors", 1.0)))
    message = error_message(messages)
    assert "wan14b_lora.safetensors" in message and "[5120, 4]" in message and "another model" in message

    graph = workflow("v2v_lora")
    graph["6"] = {"class_type": "LoadImage", "inputs": {"image": "sf_start.png"}}
    graph["8"]["inputs"]["images"] = ["6", 0]
    del graph["8"]["inputs"]["video"]
    _, messages = run(comfy, graph)
    assert "the input has 1 frame(s); video-to-video needs at least 9" in error_message(messages)

    graph = workflow("v2v_lora")
    graph["8"]["inputs"]["strength"] = 1.5
    with pytest.raises(Exception) as rejected:
        comfy.post_prompt(graph)
    assert "strength" in json.dumps(rejected.value.body["node_errors"])
