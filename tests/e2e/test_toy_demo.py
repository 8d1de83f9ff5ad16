"""The zero-download demo (workflows/api/toy_demo.json: the embedded default model) in a real ComfyUI server:
it streams one preview event per chunk and makes the same video as `python -m sf_core.generate` with the same
seed, prompts, switch time and length. The browser test plays it in the real UI and keeps a screenshot.

SF_UPDATE_SCREENSHOTS=1 refreshes docs/images/toy_demo.png."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from e2e.test_browser import browser_ready, node_script  # noqa: F401 - fixture
from sf_core.generate.bundle import decoder_class, load_bundle
from sf_core.generate.files import default_model
from sf_core.media.timing import chunks_for_frames, decoder_frame_counts

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEMO = json.loads((REPO / "workflows" / "api" / "toy_demo.json").read_text())
SAMPLER = next(i for i, n in DEMO.items() if n["class_type"] == "SFStreamSampler")
SCHEDULE = next(i for i, n in DEMO.items() if n["class_type"] == "SFPromptSchedule")


def _checkpoint_chunk_frames() -> int:
    with safe_open(str(default_model().checkpoint), "pt") as f:
        return json.loads(f.metadata()["sf_stream"])["chunk_frames"]


def _frame_counts() -> tuple[int, int]:
    """Video frames of the first and of every later chunk (the toy autoencoder has the Wan VAE's rule)."""
    return decoder_frame_counts(decoder_class(default_model()), _checkpoint_chunk_frames())


def _streamed_frames(wanted: int) -> int:
    """Frames a stream of `wanted` frames makes: it runs whole chunks (the last one is not cut)."""
    first, later = _frame_counts()
    return first + later * (chunks_for_frames(wanted, first, later) - 1)


def _pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))]


def _cli_run(tmp_path: Path) -> list[np.ndarray]:
    """The same video from the command line: `python -m sf_core.generate` with the demo's settings."""
    sampler, schedule = DEMO[SAMPLER]["inputs"], DEMO[SCHEDULE]["inputs"]
    prompt = DEMO[sampler["sf_context"][0]]["inputs"]["prompt"]
    (when, text), = (line.split(":", 1) for line in schedule["schedule"].splitlines())
    assert sampler["length_unit"] == "seconds" and schedule["recache"] and not schedule["blend_chunks"]
    command = [sys.executable, "-m", "sf_core.generate", "--prompt", prompt, "--prompt-at", when.strip(), text.strip(),
               "--recache", "--seed", str(sampler["seed"]), "--seconds", str(sampler["length"]),
               "--fps", str(sampler["fps"]), "--width", str(sampler["width"]), "--height", str(sampler["height"]),
               "--device", "cpu", "--out", str(tmp_path / "cli.mp4"), "--png-dir", str(tmp_path / "cli")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return _pngs(tmp_path / "cli")


def test_toy_demo_streams_every_chunk_and_matches_the_command_line(comfy, tmp_path):
    tag = uuid.uuid4().hex[:8]
    graph = json.loads(json.dumps(DEMO))
    graph[SAMPLER]["inputs"].update(record="png", filename_prefix=f"toy_{tag}/demo")
    graph["99"] = {"class_type": "SaveLatent", "inputs": {"samples": [SAMPLER, 0], "filename_prefix": f"toy_{tag}/l"}}
    prompt_id = comfy.post_prompt(graph)
    messages = comfy.wait_for(prompt_id, timeout=300)
    assert messages[-1].type == "execution_success", messages[-1].data

    inputs = graph[SAMPLER]["inputs"]
    first, later = _frame_counts()   # 9, then 12 frames per chunk of 3 latent frames
    wanted = round(inputs["length"] * inputs["fps"])   # 6 s -> 96 frames
    frames_total = _streamed_frames(wanted)             # the node streams and records whole chunks: 105
    chunks = [m for m in messages if m.type == "sf.stream.chunk" and m.prompt_id == prompt_id]
    assert [len(m.data["frames"]) for m in chunks] == [first] + [later] * (len(chunks) - 1)
    assert [m.data["chunk_index"] for m in chunks] == list(range(len(chunks)))
    assert all((m.data["width"], m.data["height"]) == (inputs["width"], inputs["height"]) for m in chunks)
    assert chunks[-1].data["total_frames"] == frames_total

    out = comfy.base_dir / "output" / f"toy_{tag}"
    saved = comfy.history(prompt_id)["outputs"]["99"]["latents"][0]
    latent = load_file(str(comfy.base_dir / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    channels = load_bundle(default_model(), "cpu", torch.float32, torch.float32).model.config.in_dim
    kept = min(3 * len(chunks), 21)   # the LATENT output holds the last 81 frames' latents ("last frames", 81)
    assert latent.shape == (1, channels, kept, inputs["height"] // 8, inputs["width"] // 8)  # [B, C, F, h, w]
    node_frames = _pngs(out / "demo_00001")
    assert len(node_frames) == frames_total

    cli_frames = _cli_run(tmp_path)
    assert len(cli_frames) == wanted   # the command line cuts its recording to --seconds
    worst = max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(node_frames, cli_frames))
    assert worst <= 1, f"ComfyUI and the command line differ by up to {worst}/255 in a pixel"
    # the saved latents decode (the shipped autoencoder, one shot) to the last recorded frames; the window's
    # first latent is left out: one shot, the decoder lacks its predecessor
    decoder = load_bundle(default_model(), "cpu", torch.float32, torch.float32).decoder
    pixels = (decoder.decode_chunk(latent.permute(0, 2, 1, 3, 4))[0, 1:] + 1) / 2   # [4 (kept - 1), 3, H, W]
    start = frames_total - len(pixels)                  # stream frame of pixels[0]
    recorded = torch.from_numpy(np.stack(node_frames[start:])).float().permute(0, 3, 1, 2) / 255
    pixels = pixels[:len(recorded)]
    assert (pixels - recorded).abs().max() <= 1 / 255 + 1e-5
    # the prompt switch at 3 s (new background colour) changes the picture: the second half differs from the first
    half = round(3 * inputs["fps"])
    assert np.abs(np.stack(node_frames[half:2 * half]).astype(int) - np.stack(node_frames[:half])).mean() > 1


def test_toy_demo_plays_in_the_preview_widget(comfy, browser_ready, artifacts_dir, tmp_path):  # noqa: F811
    graph = json.loads(json.dumps(DEMO))
    graph[SAMPLER]["inputs"]["filename_prefix"] = "browser/toy_demo"
    path = tmp_path / "toy_demo.json"
    path.write_text(json.dumps(graph))
    result = node_script("preview.mjs", comfy.base_url, str(path), str(tmp_path))
    assert "failure" not in result, result["failure"]
    shutil.copy(tmp_path / "preview_widget.png", artifacts_dir / "toy_demo.png")
    if os.environ.get("SF_UPDATE_SCREENSHOTS") == "1" and comfy.host.primary:
        shutil.copy(tmp_path / "preview_widget.png", REPO / "docs" / "images" / "toy_demo.png")
    stats = result["stats"]
    frames = _streamed_frames(round(graph[SAMPLER]["inputs"]["length"] * graph[SAMPLER]["inputs"]["fps"]))
    assert stats["chunks"] == chunks_for_frames(frames, *_frame_counts()) and stats["done"] == "finished"
    assert stats["framesReceived"] == frames == stats["framesDrawn"]
    assert (result["canvas"]["width"], result["canvas"]["height"]) == (64, 64)
    assert not result["errors"], result["errors"]
