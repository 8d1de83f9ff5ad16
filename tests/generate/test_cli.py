"""`python -m sf_core.generate` on tiny checkpoints in the real file layouts: mp4 output, Ctrl-C, options, errors."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sf_core.generate import cli as generate
from sf_core.weights.checkpoint import save_safetensors
from sf_core.config import ModelConfig, StreamConfig
from sf_core.model import CausalWanModel
from sf_core.media.recording import read_video
from sf_core.testing.tiny import make_tiny_models_dir

from sf_core.testing.tiny import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = ["--width", "32", "--height", "32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A ComfyUI-style models folder with a tiny DiT, umT5 (tokenizer inside), Wan VAE and TAEHV."""
    return make_tiny_models_dir(tmp_path_factory.mktemp("models"))


def _model_args(files, decoder="vae"):
    args = ["--checkpoint", str(files["checkpoint"]), "--text-encoder", str(files["text_encoder"])]
    return args + (["--vae", str(files["vae"])] if decoder == "vae" else ["--taehv", str(files["taehv"])])


def _env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cli(args, tmp_path, **kw):
    return subprocess.run([sys.executable, "-m", "sf_core.generate", *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------
# Real subprocess runs


@pytest.mark.slow
def test_cli_writes_a_playable_mp4_chunk_by_chunk(files, tmp_path):
    out = tmp_path / "v.mp4"
    proc = _cli([*_model_args(files), "--prompt", "A red fox runs", "--chunks", "3", "--fps", "12", *SIZE,
                 "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [int(n) for n in re.findall(r"chunk \d+: (\d+) frames", proc.stderr)] == [9, 12, 12]
    frames, fps = read_video(out)
    assert frames.shape == (33, 32, 32, 3)
    assert fps == pytest.approx(12)
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sigint_mid_stream_keeps_every_finished_chunk(files, tmp_path):
    out = tmp_path / "live.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "sf_core.generate", *_model_args(files), "--until-stopped",
                             *SIZE, "--out", str(out)], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # wait until the first chunk is reported
        seen.append(line)
        if line.startswith("chunk 0:"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=300)
    assert proc.returncode == 0, "".join(seen) + rest
    made = int(re.search(r"wrote (\d+) frames \((\d+) chunks\)", stdout).group(2))
    assert made >= 1
    frames, fps = read_video(out)
    assert frames.shape == (9 + 12 * (made - 1), 32, 32, 3)
    assert fps == pytest.approx(16)


# ---------------------------------------------------------------------------------------------------
# In-process runs of the same entry point

def test_frames_and_seconds_trim_to_the_exact_length(files, tmp_path):
    assert generate.main([*_model_args(files), "--frames", "14", *SIZE, "--out", str(tmp_path / "a.mp4")]) == 0
    assert read_video(tmp_path / "a.mp4")[0].shape[0] == 14
    assert generate.main([*_model_args(files), "--seconds", "1", "--fps", "10", *SIZE,
                          "--out", str(tmp_path / "b.mp4")]) == 0
    assert read_video(tmp_path / "b.mp4")[0].shape[0] == 10


def test_tiny_decoder_and_models_dir_lookup(files, tmp_path):
    out = tmp_path / "t.mp4"
    assert generate.main(["--models-dir", str(files["root"]), "--decoder", "tiny", "--chunks", "2", *SIZE,
                          "--out", str(out)]) == 0
    assert read_video(out)[0].shape == (21, 32, 32, 3)


def test_resume_continues_the_stream_exactly(files, tmp_path):
    common = [*_model_args(files), "--prompt", "A cat sleeps", *SIZE, "--seed", "3"]
    assert generate.main([*common, "--chunks", "4", "--out", str(tmp_path / "all.mp4"),
                          "--png-dir", str(tmp_path / "all")]) == 0
    state = tmp_path / "s.safetensors"
    assert generate.main([*common, "--chunks", "2", "--save-state", str(state), "--out", str(tmp_path / "p1.mp4"),
                          "--png-dir", str(tmp_path / "parts")]) == 0
    assert generate.main([*_model_args(files), *SIZE, "--chunks", "2", "--resume-state", str(state),
                          "--out", str(tmp_path / "p2.mp4"), "--png-dir", str(tmp_path / "parts")]) == 0
    assert read_video(tmp_path / "p2.mp4")[0].shape[0] == 24
    names = sorted(os.listdir(tmp_path / "all"))
    assert names == sorted(os.listdir(tmp_path / "parts")) and len(names) == 45
    for name in names[21:]:  # the continued frames equal the uninterrupted run's
        a = np.asarray(Image.open(tmp_path / "all" / name), dtype=int)
        b = np.asarray(Image.open(tmp_path / "parts" / name), dtype=int)
        assert np.abs(a - b).max() <= 1, name


def test_a_saved_stream_keeps_whole_chunks_and_a_resumed_one_counts_later_chunks(files, tmp_path, capsys):
    common = [*_model_args(files), "--prompt", "A cat sleeps", *SIZE, "--seed", "3"]
    state = tmp_path / "s.safetensors"
    # 14 frames need 2 chunks (9 + 12); trimming them would lose 7 frames the resumed stream never makes
    assert generate.main([*common, "--frames", "14", "--save-state", str(state), "--out", str(tmp_path / "p1.mp4")]) == 0
    assert read_video(tmp_path / "p1.mp4")[0].shape[0] == 21
    assert "--save-state: writing all 21 frames of the 2 chunks (not 14)" in capsys.readouterr().err
    # continued: every chunk gives 12 frames, so 12 frames are exactly one chunk (not 9 + 12 trimmed)
    assert generate.main([*_model_args(files), *SIZE, "--frames", "12", "--resume-state", str(state),
                          "--out", str(tmp_path / "p2.mp4")]) == 0
    assert read_video(tmp_path / "p2.mp4")[0].shape[0] == 12
    assert re.search(r"wrote 12 frames \(1 chunks\)", capsys.readouterr().out)


def test_dry_run_prints_the_resolved_configuration(files, tmp_path, capsys):
    assert generate.main([*_model_args(files), "--prompt", "first", "--prompt-at", "5s", "second",
                          "--prompt-at", "c4", "third", "--chunks", "10", "--steps", "2", "--window", "9",
                          "--sink", "3", *SIZE, "--dry-run", "--out", str(tmp_path / "never.mp4")]) == 0
    text = capsys.readouterr().out
    assert str(files["checkpoint"]) in text and "32x32" in text and "10 chunks" in text
    assert "steps=[1000.0, 500.0]" in text and "window=9 sink=3" in text
    assert "prompt at chunk 4: 'third'" in text
    assert "prompt at chunk 7: 'second'" in text  # 5 s * 16 fps = frame 80; chunk 7 starts at 9 + 6 * 12 = 81
    assert not (tmp_path / "never.mp4").exists()


def test_help_documents_every_option():
    parser = generate.build_parser()
    text = parser.format_help()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help, action.option_strings
    assert "examples:" in text and "models/vae_approx" in text


# ---------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("text, expected", [("5s", ("s", 5.0)), ("2.5s", ("s", 2.5)), (" 0s", ("s", 0.0)),
                                            ("c4", ("c", 4)), ("C12", ("c", 12))])
def test_prompt_at_parses_seconds_and_chunks(text, expected):
    assert generate.parse_when(text) == expected


@pytest.mark.parametrize("text", ["5", "c", "4c", "-1s", "5 seconds", "chunk4"])
def test_prompt_at_rejects_other_forms(text):
    with pytest.raises(generate.UsageError, match="'5s'"):
        generate.parse_when(text)


def test_times_map_to_the_nearest_chunk_start_like_the_nodes():
    from sf_core.media.timing import chunk_at_time, chunk_start_frame, chunks_for_frames
    first, later = 9, 12  # Wan: chunk k >= 1 starts at 9 + 12 (k - 1)
    starts = [chunk_start_frame(k, first, later) for k in range(6)]
    assert starts == [0, 9, 21, 33, 45, 57]
    for frame in range(0, 58):
        k = chunk_at_time(frame / 16, 16, first, later)
        assert abs(starts[k] - frame) == min(abs(s - frame) for s in starts)
    assert [chunks_for_frames(n, first, later) for n in (1, 9, 10, 21, 22)] == [1, 1, 2, 2, 3]


def test_steps_option():
    assert generate.parse_steps("4") == (1000.0, 750.0, 500.0, 250.0)
    assert generate.parse_steps("1000,500") == (1000.0, 500.0)
    for bad in ("0", "x", "1000,0", "1000,2000"):
        with pytest.raises(generate.UsageError):
            generate.parse_steps(bad)


# ---------------------------------------------------------------------------------------------------
# Errors


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_missing_file_names_it_and_the_comfyui_folder(files, tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    args = _model_args(files)
    args[1] = str(missing)
    assert generate.main([*args, *SIZE, "--out", str(tmp_path / "x.mp4")]) == 2
    err = _one_line_error(capsys)
    assert str(missing) in err and "not found" in err and "models/diffusion_models" in err


@pytest.mark.parametrize("role, flag_index, found, folder", [
    ("text encoder", 3, "a Wan2.1 VAE", "models/text_encoders"),
    ("checkpoint", 1, "a umT5/T5 text encoder", "models/diffusion_models"),
])
def test_swapped_files_say_what_was_found(files, tmp_path, capsys, role, flag_index, found, folder):
    args = _model_args(files)
    args[flag_index] = str(files["vae"] if role == "text encoder" else files["text_encoder"])
    assert generate.main([*args, *SIZE, "--out", str(tmp_path / "x.mp4")]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {role} file") and f"found {found}" in err and folder in err


def test_garbage_file_gives_one_line_and_exit_code_2(files, tmp_path, capsys):
    junk = tmp_path / "self_forcing_dmd.pt"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    args = _model_args(files)
    args[1] = str(junk)
    assert generate.main([*args, *SIZE, "--out", str(tmp_path / "x.mp4")]) == 2
    err = _one_line_error(capsys)
    assert str(junk) in err and "models/diffusion_models" in err


def test_taehv_given_as_vae_is_accepted_but_vae_given_as_taehv_is_not(files, tmp_path, capsys):
    args = ["--checkpoint", str(files["checkpoint"]), "--text-encoder", str(files["text_encoder"]),
            "--taehv", str(files["vae"])]
    assert generate.main([*args, *SIZE, "--out", str(tmp_path / "x.mp4")]) == 2
    err = _one_line_error(capsys)
    assert "taehv file" in err and "a Wan2.1 VAE" in err and "models/vae_approx" in err


def test_partial_model_arguments_and_bad_sizes_are_usage_errors(files, tmp_path, capsys):
    assert generate.main(["--checkpoint", str(files["checkpoint"]), "--models-dir", str(tmp_path),
                          "--out", str(tmp_path / "x.mp4")]) == 2
    err = _one_line_error(capsys)
    assert "--text-encoder" in err and "--vae" in err and "text_encoders" in err
    assert generate.main([*_model_args(files), "--width", "30", "--height", "32", "--dry-run"]) == 2
    assert "multiples of 16" in _one_line_error(capsys)


def test_embedded_toy_manifest_uses_the_toy_text_encoder_and_pixel_decoder(tmp_path, monkeypatch, capsys):
    """The format the trained toy model will ship in: manifest.json + a DiT on 12-channel pixel latents."""
    import json
    from sf_core.generate import files as model_files
    folder = tmp_path / "default"
    cfg = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=12, out_dim=12, text_dim=64,
                      freq_dim=32, text_len=24)
    save_safetensors(randomize(CausalWanModel(cfg, attention="sdpa")), folder / "model.safetensors",
                     StreamConfig(chunk_frames=2), cfg)
    (folder / "manifest.json").write_text(json.dumps({
        "checkpoint": "model.safetensors", "text_encoder": {"kind": "toy", "text_dim": 64, "max_len": 24},
        "decoder": {"kind": "toy_pixels"}, "width": 16, "height": 24, "fps": 8, "chunks": 3,
        "prompt": "a red circle moves left on a navy background", "description": "toy test model"}))
    monkeypatch.setattr(model_files, "DEFAULT_ASSETS", folder)
    assert generate.main(["--out", str(tmp_path / "toy.mp4")]) == 0
    frames, fps = read_video(tmp_path / "toy.mp4")
    assert frames.shape == (6, 24, 16, 3) and fps == pytest.approx(8)  # 3 chunks × 2 latent frames, 1:1
    assert "toy test model" in capsys.readouterr().err
    assert generate.main(["--prompt", "a purple unicorn", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "unknown words" in capsys.readouterr().err
    long = ", ".join(["a red circle moves left on a navy background"] * 4)  # 39 words for 24 positions
    assert generate.main(["--prompt", long, "--chunks", "1", "--out", str(tmp_path / "long.mp4")]) == 0
    err = capsys.readouterr().err
    assert "note: prompt 'a red circle moves left on a navy background, a …' has 39 tokens; the text encoder " \
           "keeps the first 24" in err and long not in err
