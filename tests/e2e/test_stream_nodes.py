"""The Self-Forcing stream nodes in a real ComfyUI server, on tiny checkpoints written in the real formats
under the real Wan asset names (tests/e2e/tiny_files.py)."""
from __future__ import annotations

import copy
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from e2e.hosts import in_core_tree
from e2e.tiny_files import DIT_SAFETENSORS, TINY_DECODER, VAE

pytestmark = pytest.mark.e2e

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"
SIZE = 32  # pixels; keeps the tiny VAE fast on a shared CPU
OUR_NODES = ("SFModelLoader", "SFVAELoader", "SFVAEFromNative", "SFTextEncoderLoader", "SFTextEncode",
             "SFConditioningToContext", "SFStreamSampler", "SFStreamExtend", "SFPromptSchedule",
             "SFImageToVideoStart", "SFSaveStream", "SFLoadStream", "SFExportNativeAR")


def workflow(name: str, chunks: int = 2) -> dict:
    """An API workflow from workflows/api, shrunk to SIZE×SIZE and `chunks` chunks per stream node."""
    graph = json.loads((WORKFLOWS / f"{name}.json").read_text())
    tag = uuid.uuid4().hex[:8]
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] in ("SFStreamSampler", "SFImageToVideoStart"):
            inputs.update(width=SIZE, height=SIZE)
        if node["class_type"] in ("SFStreamSampler", "SFStreamExtend"):
            inputs.update(length=chunks, length_unit="chunks")
        if "filename_prefix" in inputs:
            inputs["filename_prefix"] = f"e2e_{tag}/{inputs['filename_prefix'].split('/')[-1]}"
    return graph


def node_of(graph: dict, class_type: str) -> str:
    return next(i for i, n in graph.items() if n["class_type"] == class_type)


def run(comfy, graph: dict):
    prompt_id = comfy.post_prompt(graph)
    return prompt_id, comfy.wait_for(prompt_id, timeout=600)


def of_type(messages, kind, prompt_id):
    return [m for m in messages if m.type == kind and m.prompt_id == prompt_id]


def report(comfy, prompt_id, node_id) -> str:
    return comfy.history(prompt_id)["outputs"][node_id]["text"][0]


def recording_of(text: str) -> Path:
    return Path(next(line for line in text.splitlines() if line.startswith("recording: "))[len("recording: "):])


def video_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def error_message(messages) -> str:
    assert messages[-1].type == "execution_error", messages[-1]
    return messages[-1].data["exception_message"]


def test_every_node_is_registered_with_its_files(comfy, models):
    info = comfy.object_info()
    for node_type in OUR_NODES:
        assert node_type in info, f"{node_type} missing from /object_info; see the server log"
        assert in_core_tree(info[node_type]["category"], info), (node_type, info[node_type]["category"])
        assert info[node_type]["description"], node_type
    models_listed = info["SFModelLoader"]["input"]["required"]["model_name"][0]
    assert {"self_forcing_dmd.pt", DIT_SAFETENSORS} <= set(models_listed)
    assert {VAE, TINY_DECODER} <= set(info["SFVAELoader"]["input"]["required"]["vae_name"][0])
    assert info["SFStreamSampler"]["output"] == ["LATENT", "IMAGE", "SF_STREAM", "STRING", "VIDEO"]
    assert "SFStreamSampler" in comfy.get_json("/sf/status")["preview_node_types"]


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_api_workflow_runs(comfy, models, name):
    graph = workflow(name)
    prompt_id, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    for node_id, node in graph.items():
        if node["class_type"] in ("SFStreamSampler", "SFStreamExtend"):
            text = report(comfy, prompt_id, node_id)
            assert text.startswith("finished: 2/2 chunks"), text
            assert video_frames(recording_of(text)) > 0
        if node["class_type"] == "SFSaveStream":
            assert Path(comfy.history(prompt_id)["outputs"][node_id]["text"][0]).is_file()


def test_one_preview_event_per_chunk_in_order_before_the_sampler_finishes(comfy, models):
    graph = workflow("t2v_stream", chunks=3)
    sampler = node_of(graph, "SFStreamSampler")
    prompt_id, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    chunks = [m for m in of_type(messages, "sf.stream.chunk", prompt_id) if m.data["node"] == sampler]
    assert [m.data["chunk_index"] for m in chunks] == [0, 1, 2]
    assert [len(m.data["frames"]) for m in chunks] == [9, 12, 12]  # 3 latents -> 9 frames, then 12
    assert all((m.data["width"], m.data["height"]) == (SIZE, SIZE) for m in chunks)
    assert [m.data["total_frames"] for m in chunks] == [9, 21, 33]
    executed = next(m for m in messages if m.type == "executed" and m.data["node"] == sampler)
    assert messages.index(chunks[-1]) < messages.index(executed)
    progress = [m.data["value"] for m in of_type(messages, "progress", prompt_id) if m.data["node"] == sampler]
    # one update per chunk; current ComfyUI (0.33) throttles the ones between the first and the last
    assert progress[0] == 1 and progress[-1] == 3 and progress == sorted(set(progress))
    assert progress == [1, 2, 3] or not comfy.host.primary, progress
    done = of_type(messages, "sf.stream.done", prompt_id)
    assert [d.data["reason"] for d in done] == ["finished"]
    assert video_frames(recording_of(report(comfy, prompt_id, sampler))) == 33


def test_interrupt_mid_stream_stops_within_one_chunk_and_keeps_recorded_frames(comfy, models):
    graph = workflow("t2v_stream", chunks=200)
    sampler = node_of(graph, "SFStreamSampler")
    start = len(comfy.messages)
    prompt_id = comfy.post_prompt(graph)
    first = comfy.wait_until(lambda m: m.type == "sf.stream.chunk" and m.prompt_id == prompt_id
                             and m.data["chunk_index"] == 1, timeout=300, start=start)
    interrupted_at = comfy.messages.index(first) + 1
    comfy.interrupt()
    messages = comfy.wait_for(prompt_id, timeout=300)
    assert messages[-1].type == "execution_interrupted", messages[-1]
    chunks = of_type(messages, "sf.stream.chunk", prompt_id)
    assert len([m for m in comfy.messages[interrupted_at:] if m in chunks]) <= 1
    assert [m.data["chunk_index"] for m in chunks] == list(range(len(chunks)))
    assert of_type(messages, "sf.stream.done", prompt_id)[0].data["reason"] == "interrupted"
    recordings = sorted((comfy.base_dir / "output").glob(f"{graph[sampler]['inputs']['filename_prefix']}_*.mp4"))
    assert len(recordings) == 1
    assert video_frames(recordings[0]) == chunks[-1].data["total_frames"]


def _latent(comfy, prompt_id, node_id) -> torch.Tensor:
    saved = comfy.history(prompt_id)["outputs"][node_id]["latents"][0]
    path = comfy.base_dir / "output" / saved["subfolder"] / saved["filename"]
    return load_file(str(path))["latent_tensor"]


def _png_frames(prefix_folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(prefix_folder.glob("frame_*.png"))]


@pytest.mark.parametrize("cache", [{"cache_window": 0, "cache_sink": -1}, {"cache_window": 6, "cache_sink": 3}],
                         ids=["global-cache", "rolling-cache-with-sink"])
def test_chained_extend_continues_exactly_like_one_long_run(comfy, models, cache):
    """sampler(2) → extend(2, new prompt, recache) → extend(1) equals one 5-chunk run that switches the prompt
    at chunk 2 through a schedule: latents and frames, bit for bit."""
    tag = uuid.uuid4().hex[:8]
    base = workflow("extend_chain_prompt_switch")
    chain = copy.deepcopy(base)
    chain["5"]["inputs"].update(cache, length=2, record="png", filename_prefix=f"chain_{tag}/a")
    chain["7"]["inputs"].update(length=2, record="png", filename_prefix=f"chain_{tag}/b")
    chain["8"]["inputs"].update(length=1, record="png", filename_prefix=f"chain_{tag}/c")
    del chain["9"]
    for i, source in (("11", "5"), ("12", "7"), ("13", "8")):
        chain[i] = {"class_type": "SaveLatent", "inputs": {"samples": [source, 0], "filename_prefix": f"chain_{tag}/l{i}"}}
    prompt_id, messages = run(comfy, chain)
    assert messages[-1].type == "execution_success", messages[-1].data
    chained = torch.cat([_latent(comfy, prompt_id, i) for i in ("11", "12", "13")], dim=2)

    long = {k: copy.deepcopy(base[k]) for k in ("1", "2", "3", "4", "5", "6")}
    long["5"]["inputs"].update(cache, length=5, record="png", filename_prefix=f"long_{tag}/a",
                               schedule=["10", 0], seed=base["5"]["inputs"]["seed"])
    switch_text = base["6"]["inputs"]["prompt"]
    long["10"] = {"class_type": "SFPromptSchedule", "inputs": {"sf_context": ["3", 0], "schedule": f"chunk 2: {switch_text}",
                                                               "blend_chunks": 0, "recache": True}}
    long["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"long_{tag}/l"}}
    long_id, messages = run(comfy, long)
    assert messages[-1].type == "execution_success", messages[-1].data
    single = _latent(comfy, long_id, "11")

    assert chained.shape == single.shape == (1, 16, 15, SIZE // 8, SIZE // 8)
    assert torch.equal(chained, single)
    out = comfy.base_dir / "output"
    chained_frames = [f for part in "abc" for f in _png_frames(out / f"chain_{tag}" / f"{part}_00001")]
    single_frames = _png_frames(out / f"long_{tag}" / "a_00001")
    assert len(chained_frames) == len(single_frames) == 9 + 4 * 12
    assert all(np.array_equal(a, b) for a, b in zip(chained_frames, single_frames))


def test_saved_stream_loads_and_continues_like_the_original(comfy, models):
    tag = uuid.uuid4().hex[:8]
    graph = workflow("extend_chain_prompt_switch", chunks=1)
    graph["9"]["inputs"]["sf_stream"] = ["5", 2]
    graph["8"]["inputs"].update(sf_stream=["5", 2], record="png", filename_prefix=f"saved_{tag}/direct")
    del graph["6"], graph["7"]
    prompt_id, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    saved = Path(comfy.history(prompt_id)["outputs"]["9"]["text"][0])
    shutil.copy(saved, comfy.base_dir / "input" / f"{tag}.sfstream.safetensors")

    loaded = {k: graph[k] for k in ("1", "4")}
    loaded["20"] = {"class_type": "SFLoadStream", "inputs": {"state_file": f"{tag}.sfstream.safetensors",
                                                             "sf_model": ["1", 0], "sf_vae": ["4", 0]}}
    loaded["21"] = copy.deepcopy(graph["8"])
    loaded["21"]["inputs"].update(sf_stream=["20", 0], filename_prefix=f"saved_{tag}/loaded")
    load_id, messages = run(comfy, loaded)
    assert messages[-1].type == "execution_success", messages[-1].data
    out = comfy.base_dir / "output" / f"saved_{tag}"
    direct, again = _png_frames(out / "direct_00001"), _png_frames(out / "loaded_00001")
    assert len(direct) == len(again) == 12
    assert all(np.array_equal(a, b) for a, b in zip(direct, again))


def test_missing_file_is_rejected_before_running(comfy, models):
    graph = workflow("t2v_stream")
    graph["1"]["inputs"]["model_name"] = "no_such_model.safetensors"
    with pytest.raises(Exception) as rejected:
        comfy.post_prompt(graph)
    assert type(rejected.value).__name__ == "PromptRejected" and rejected.value.status == 400
    assert "no_such_model.safetensors" in json.dumps(rejected.value.body["node_errors"])


def test_wrong_model_type_gives_a_readable_error(comfy, models):
    shutil.copy(models[VAE], comfy.base_dir / "models" / "diffusion_models" / "vae_by_mistake.safetensors")
    graph = workflow("t2v_stream")
    graph["1"]["inputs"]["model_name"] = "vae_by_mistake.safetensors"
    _, messages = run(comfy, graph)
    message = error_message(messages)
    assert "vae_by_mistake.safetensors" in message and "Wan2.1 VAE" in message and "models/vae" in message


def test_odd_size_is_rejected_when_queued(comfy, models):
    graph = workflow("t2v_stream")
    graph[node_of(graph, "SFStreamSampler")]["inputs"]["width"] = 40
    with pytest.raises(Exception) as rejected:
        comfy.post_prompt(graph)
    assert type(rejected.value).__name__ == "PromptRejected" and rejected.value.status == 400
    assert "width 40 is not a multiple of 16" in json.dumps(rejected.value.body["node_errors"])


def test_image_start_needs_an_encoder(comfy, models):
    graph = workflow("i2v_start")
    graph["6"] = {"class_type": "SFVAELoader", "inputs": {"vae_name": TINY_DECODER, "dtype": "default",
                                                          "tiny_decoder_mode": "memory"}}
    _, messages = run(comfy, graph)
    assert "cannot encode images" in error_message(messages)


def test_exported_native_ar_file_loads_and_streams(comfy, models):
    name = f"native_ar_{uuid.uuid4().hex[:8]}.safetensors"
    graph = {"1": copy.deepcopy(workflow("t2v_stream")["1"]),
             "2": {"class_type": "SFExportNativeAR", "inputs": {"sf_model": ["1", 0], "filename": name,
                                                                "overwrite": False}}}
    prompt_id, messages = run(comfy, graph)
    assert messages[-1].type == "execution_success", messages[-1].data
    path = Path(comfy.history(prompt_id)["outputs"]["2"]["text"][0])
    assert path == comfy.base_dir / "models" / "diffusion_models" / name
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["config"])["transformer"]["causal_ar"] is True
    again = copy.deepcopy(graph)
    again["1"]["inputs"]["dtype"] = "fp32"  # a changed input, so the export runs again instead of being cached
    _, messages = run(comfy, again)
    assert "exists" in error_message(messages)

    stream = workflow("t2v_stream", chunks=1)
    stream["1"]["inputs"]["model_name"] = name
    _, messages = run(comfy, stream)
    assert messages[-1].type == "execution_success", messages[-1].data
