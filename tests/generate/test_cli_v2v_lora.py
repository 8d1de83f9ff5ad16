"""`python -m sf_core.generate --input-video / --strength / --lora`: lengths, strength rules, LoRA round trip, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sf_core.config import ModelConfig, StreamConfig
from sf_core.generate import cli as generate
from sf_core.media.recording import VideoRecorder, read_video
from sf_core.model import CausalWanModel
from sf_core.testing.tiny import TINY_UMT5, make_tiny_umt5, randomize
from sf_core.train.lora import export_lora, inject_lora, merge_lora_state_dict
from sf_core.vae.wan import VAEConfig, WanVAE
from sf_core.weights.checkpoint import save_safetensors

DIT = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=TINY_UMT5.dim,
                  freq_dim=32, text_len=16)
SIZE = ["--width", "32", "--height", "32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny DiT, umT5, a full Wan VAE (encoder included), a trained-format LoRA and its merged checkpoint."""
    root = tmp_path_factory.mktemp("v2v")
    torch.manual_seed(0)
    model = randomize(CausalWanModel(DIT, attention="sdpa"))
    paths = {"checkpoint": root / "dit.safetensors", "text_encoder": root / "umt5.safetensors",
             "vae": root / "vae.safetensors", "lora": root / "ours.safetensors", "merged": root / "merged.safetensors",
             "foreign": root / "foreign.safetensors", "video": root / "in.mp4"}
    save_safetensors(model, paths["checkpoint"], StreamConfig(), DIT)
    make_tiny_umt5(paths["text_encoder"])
    save_file(WanVAE(VAEConfig(dim=4)).state_dict(), str(paths["vae"]))
    # the training code path: inject adapters, give them values, export adapters only / merged weights
    inject_lora(model, rank=2, alpha=4.0, targets=("self_attn.q", "cross_attn.v", "ffn.0"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("lora_a", "lora_b")):
                p.copy_(torch.randn_like(p) * 0.5)
    sd = model.state_dict()
    export_lora(sd, None, paths["lora"], alpha=4.0, rank=2, dtype=torch.float32)
    save_safetensors(merge_lora_state_dict(sd, 4.0 / 2), paths["merged"], StreamConfig(), DIT)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 1536),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(1536, 4)}, str(paths["foreign"]))
    frames = (np.random.default_rng(0).random((26, 32, 32, 3)) * 255).astype(np.uint8)  # 9 + 12 + 5 frames
    with VideoRecorder(paths["video"], fps=10) as rec:
        rec.write(frames)
    return paths


def _args(files, checkpoint="checkpoint"):
    return ["--checkpoint", str(files[checkpoint]), "--text-encoder", str(files["text_encoder"]),
            "--vae", str(files["vae"]), "--prompt", "A red fox runs"]


def _error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def test_output_follows_the_input_video_including_a_partial_last_chunk(files, tmp_path, capsys):
    out = tmp_path / "v2v.mp4"
    assert generate.main([*_args(files), "--input-video", str(files["video"]), "--strength", "0.9",
                          "--out", str(out)]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (26, 32, 32, 3) and fps == pytest.approx(10)   # the input's length, size and rate
    assert generate.main([*_args(files), "--input-video", str(files["video"]), "--frames", "14",
                          "--out", str(tmp_path / "short.mp4")]) == 0
    assert read_video(tmp_path / "short.mp4")[0].shape[0] == 14


def test_strength_one_is_text_to_video(files, tmp_path):
    assert generate.main([*_args(files), "--input-video", str(files["video"]), "--strength", "1",
                          "--out", str(tmp_path / "a.mp4")]) == 0
    assert generate.main([*_args(files), *SIZE, "--frames", "26", "--fps", "10", "--out", str(tmp_path / "b.mp4")]) == 0
    assert np.array_equal(read_video(tmp_path / "a.mp4")[0], read_video(tmp_path / "b.mp4")[0])


def test_input_is_resized_to_width_and_height(files, tmp_path):
    assert generate.main([*_args(files), "--input-video", str(files["video"]), "--width", "16", "--height", "48",
                          "--out", str(tmp_path / "r.mp4")]) == 0
    assert read_video(tmp_path / "r.mp4")[0].shape == (26, 48, 16, 3)


def test_embedded_default_model_restyles_a_toy_world_video(tmp_path):
    """Strength 0 gives the input back (the toy latent is exact; only mp4 re-encoding differs)."""
    assert generate.main(["--chunks", "3", "--out", str(tmp_path / "toy.mp4")]) == 0
    toy, _ = read_video(tmp_path / "toy.mp4")
    assert generate.main(["--input-video", str(tmp_path / "toy.mp4"), "--strength", "0",
                          "--out", str(tmp_path / "same.mp4")]) == 0
    same, _ = read_video(tmp_path / "same.mp4")
    assert same.shape == toy.shape and np.abs(same.astype(int) - toy.astype(int)).mean() < 6
    assert generate.main(["--input-video", str(tmp_path / "toy.mp4"), "--strength", "0.95",
                          "--prompt", "a green triangle moves down on a maroon background",
                          "--out", str(tmp_path / "styled.mp4")]) == 0
    styled, _ = read_video(tmp_path / "styled.mp4")
    assert styled.shape == toy.shape and np.abs(styled.astype(int) - toy.astype(int)).mean() > 6


def test_trained_lora_equals_its_merged_export_and_strength_zero_changes_nothing(files, tmp_path):
    run = lambda name, *extra: generate.main([*_args(files, name if name == "merged" else "checkpoint"), *SIZE,  # noqa: E731
                                              "--chunks", "2", *extra, "--out", str(tmp_path / f"{name}.mp4")])
    assert run("merged") == 0 and run("lora", "--lora", str(files["lora"])) == 0
    assert run("plain") == 0 and run("zero", "--lora", f"{files['lora']}:0") == 0
    video = {n: read_video(tmp_path / f"{n}.mp4")[0] for n in ("merged", "lora", "plain", "zero")}
    assert np.abs(video["lora"].astype(int) - video["merged"].astype(int)).max() <= 1
    assert np.array_equal(video["zero"], video["plain"]) and not np.array_equal(video["lora"], video["plain"])


@pytest.mark.parametrize("extra, message", [
    (["--strength", "0.5"], "--strength needs --input-video"),
    (["--input-video", "VIDEO", "--strength", "1.5"], r"--strength 1.5: must lie in [0, 1]"),
    (["--input-video", "GARBAGE"], "--input-video GARBAGE: cannot read it as a video"),
    (["--input-video", "VIDEO", "--frames", "5"], "5 frame(s) to use; video-to-video needs at least 9"),
    (["--input-video", "VIDEO", "--until-stopped"], "does not combine with --until-stopped"),
    (["--lora", "missing.safetensors"], "--lora missing.safetensors: file missing.safetensors not found"),
    (["--lora", "FOREIGN:0.5"], "down [4, 1536] and up [1536, 4], but the model's blocks.0.self_attn.q is [32, 32]"),
])
def test_bad_inputs_give_one_line_errors(files, tmp_path, capsys, extra, message):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 10)
    subst = {"VIDEO": str(files["video"]), "GARBAGE": str(garbage), "FOREIGN:0.5": f"{files['foreign']}:0.5"}
    extra = [subst.get(a, a) for a in extra]
    out = tmp_path / "x.mp4"
    assert generate.main([*_args(files), *extra, "--out", str(out)]) == 2
    line = _error(capsys)
    assert message.replace("GARBAGE", str(garbage)) in line, line


def test_text_encoder_layers_of_a_lora_are_merged_before_the_prompts_are_encoded(files, tmp_path, capsys):
    d, inner = TINY_UMT5.dim, TINY_UMT5.num_heads * TINY_UMT5.head_dim
    g = torch.Generator().manual_seed(3)
    save_file({"lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": torch.randn(2, d, generator=g),
               "lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight": torch.randn(inner, 2, generator=g)},
              str(tmp_path / "te.safetensors"))
    common = [*_args(files), *SIZE, "--chunks", "1"]
    assert generate.main([*common, "--out", str(tmp_path / "plain.mp4")]) == 0
    assert generate.main([*common, "--lora", str(tmp_path / "te.safetensors"), "--out", str(tmp_path / "te.mp4")]) == 0
    assert "0 DiT layer(s), 1 text-encoder layer(s)" in capsys.readouterr().err
    assert not np.array_equal(read_video(tmp_path / "plain.mp4")[0], read_video(tmp_path / "te.mp4")[0])


def test_a_stream_made_with_a_lora_resumes_only_with_it(files, tmp_path, capsys):
    common = [*_args(files), *SIZE, "--chunks", "1", "--lora", str(files["lora"])]
    assert generate.main([*common, "--save-state", str(tmp_path / "s.safetensors"), "--out", str(tmp_path / "a.mp4")]) == 0
    assert generate.main([*common, "--resume-state", str(tmp_path / "s.safetensors"), "--out", str(tmp_path / "b.mp4")]) == 0
    capsys.readouterr()
    assert generate.main([*_args(files), "--chunks", "1", "--resume-state", str(tmp_path / "s.safetensors"),
                          "--out", str(tmp_path / "c.mp4")]) == 2
    error = _error(capsys)  # the weights fingerprint, or (where it samples no LoRA layer) the recorded LoRAs
    assert "made with other weights" in error or "made with ours.safetensors:1; give the same --lora" in error


def test_tiny_decoder_runs_v2v_with_its_own_encoder_and_a_decoder_only_file_is_refused(files, tmp_path, capsys):
    from sf_core.vae.taehv import TAEHV
    save_file(TAEHV(widths=(8, 8, 8, 8), encoder_width=8).state_dict(), str(tmp_path / "taew2_1.safetensors"))
    save_file(TAEHV(widths=(8, 8, 8, 8), with_encoder=False).state_dict(), str(tmp_path / "dec_only.safetensors"))
    tiny = ["--checkpoint", str(files["checkpoint"]), "--text-encoder", str(files["text_encoder"]),
            "--input-video", str(files["video"])]
    assert generate.main([*tiny, "--taehv", str(tmp_path / "taew2_1.safetensors"), "--out", str(tmp_path / "t.mp4")]) == 0
    assert read_video(tmp_path / "t.mp4")[0].shape == (26, 32, 32, 3)
    capsys.readouterr()
    assert generate.main([*tiny, "--taehv", str(tmp_path / "dec_only.safetensors"), "--out", str(tmp_path / "d.mp4")]) == 2
    assert "--input-video: this TAEHV file has no encoder weights" in _error(capsys)


def test_lora_at_changes_an_unmerged_strength_from_that_chunk_on(files, tmp_path, capsys):
    common = [*_args(files), *SIZE, "--chunks", "2"]
    assert generate.main([*common, "--out", str(tmp_path / "plain.mp4")]) == 0
    assert generate.main([*common, "--lora", f"{files['lora']}:1", "--out", str(tmp_path / "always.mp4")]) == 0
    assert generate.main([*common, "--lora-at", "c1", f"{files['lora']}:1", "--out", str(tmp_path / "late.mp4")]) == 0
    assert "unmerged, starting at strength 0.0" in capsys.readouterr().err
    plain, always, late = (read_video(tmp_path / f"{n}.mp4")[0] for n in ("plain", "always", "late"))
    assert np.array_equal(late[:9], plain[:9])            # chunk 0: strength 0, bit for bit
    assert not np.array_equal(late[9:], plain[9:]) and not np.array_equal(late[9:], always[9:])
    assert generate.main([*common, "--lora-at", "c1", f"{files['lora']}:1", "--dry-run"]) == 0
    assert "lora at chunk 1: lora 0 → 1.0" in capsys.readouterr().out
