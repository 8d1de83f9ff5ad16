"""Nothing lost, nothing silent: each class of bad input ends in one actionable line, before expensive work
where it can, and nothing already produced is lost (docs/reliability.md lists the guarantees)."""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sf_core.config import StreamConfig
from sf_core.generate import cli as generate
from sf_core.media.outputs import claim_file
from sf_core.media.recording import count_frames, read_video
from sf_core.model import CausalWanModel
from sf_core.state import FORMAT, read_header
from sf_core.testing.tiny import TINY_GENERATE_DIT, make_tiny_models_dir, randomize
from sf_core.train.checkpointing import (ResumeError, checkpoint_problem, load_checkpoint, resume_checkpoint,
                                         save_checkpoint)
from sf_core.train.distributed import DistContext, seed_everything
from sf_core.weights.checkpoint import save_safetensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width", "32", "--height", "32"]
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), strategy="none",
                  mixed_precision=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny model files, variants of the checkpoint, and stream states made with the toy and tiny models."""
    root = tmp_path_factory.mktemp("reliability")
    files = make_tiny_models_dir(root / "models")
    sd = load_file(str(files["checkpoint"]))
    meta = safe_open(str(files["checkpoint"]), "pt").metadata()
    for name, change in {"nan": ("head.head.weight", float("nan")), "inf": ("blocks.0.ffn.0.weight", float("inf"))}.items():
        bad = dict(sd)
        bad[change[0]] = bad[change[0]].clone().fill_(change[1])
        save_file(bad, str(root / f"{name}.safetensors"), meta)
    save_file({k: (v * 100).long() for k, v in sd.items()}, str(root / "int64.safetensors"), meta)
    save_file({k: v > 0 for k, v in sd.items()}, str(root / "bool.safetensors"), meta)
    save_safetensors(randomize(CausalWanModel(TINY_GENERATE_DIT, attention="sdpa"), seed=7),
                     root / "other_weights.safetensors", StreamConfig(), TINY_GENERATE_DIT)
    save_file(sd, str(root / "chunk_minus_3.safetensors"), {**meta, **StreamConfig(chunk_frames=-3).to_metadata()})
    save_file(sd, str(root / "stream_garbage.safetensors"), {**meta, "sf_stream": "{chunk_frames: 3"})
    save_file(sd, str(root / "stream_wrong_type.safetensors"), {**meta, "sf_stream": '{"shift": "high"}'})
    tiny = [*_files(files), *TINY]
    assert generate.main([*tiny, "--chunks", "1", "--out", str(root / "t.mp4"),
                          "--save-state", str(root / "tiny_state.safetensors")]) == 0
    assert generate.main(["--chunks", "1", "--out", str(root / "toy.mp4"),
                          "--save-state", str(root / "toy_state.safetensors")]) == 0
    state = load_file(str(root / "tiny_state.safetensors"))
    state_meta = safe_open(str(root / "tiny_state.safetensors"), "pt").metadata()
    save_file({k: v for k, v in state.items() if k != "context"}, str(root / "no_context.safetensors"), state_meta)
    save_file(state, str(root / "no_state_meta.safetensors"), {"format": FORMAT})
    save_file(state, str(root / "garbage_state_meta.safetensors"), {"format": FORMAT, "state": "{not json"})
    fields = json.loads(state_meta["state"])
    fields["latent_width"] = "wide"
    save_file(state, str(root / "bad_field.safetensors"), {"format": FORMAT, "state": json.dumps(fields)})
    return {**files, "dir": root}


def _files(files, checkpoint=None):
    return ["--checkpoint", str(checkpoint or files["checkpoint"]), "--text-encoder", str(files["text_encoder"]),
            "--vae", str(files["vae"])]


def _one_error_line(capsys) -> str:
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"old")
    return path


# ---------------------------------------------------------------------------------------------------
# Refused before anything loads: `--dry-run` (which reads no tensor) already gives the one line.
# (case, argv(tmp_path, models), pattern of the error line)

UP_FRONT = [
    # output paths
    ("out inside a file", lambda t, m: ["--out", str(_touch(t / "f.txt") / "x.mp4")], r"f\.txt is a file, not a folder"),
    ("out is a folder", lambda t, m: ["--out", str(t)], r"is a folder; give a file name such as .*output\.mp4"),
    ("out exists", lambda t, m: ["--out", str(_touch(t / "a.mp4"))], r"--out .*a\.mp4: already exists; add --overwrite"),
    ("save-state is a folder", lambda t, m: ["--save-state", str(t)], r"--save-state .*: is a folder"),
    ("save-state exists", lambda t, m: ["--save-state", str(_touch(t / "s.safetensors"))], r"already exists"),
    ("save-state is out", lambda t, m: ["--out", str(t / "x"), "--save-state", str(t / "x")], r"is also --out"),
    ("png-dir is a file", lambda t, m: ["--png-dir", str(_touch(t / "p"))], r"--png-dir .*: is a file, not a folder"),
    ("png frames exist", lambda t, m: ["--png-dir", str(_touch(t / "p" / "frame_000000.png").parent)],
     r"already holds frame_000000\.png; add --overwrite"),
    # non-finite and out-of-range numbers
    ("shift nan", lambda t, m: ["--shift", "nan"], r"--shift nan: expected a finite number"),
    ("shift 0", lambda t, m: ["--shift", "0"], r"--shift 0.0: expected a number above 0"),
    ("seconds nan", lambda t, m: ["--seconds", "nan"], r"--seconds nan: expected a finite number"),
    ("seconds inf", lambda t, m: ["--seconds", "inf"], r"--seconds inf: expected a finite number"),
    ("seconds negative", lambda t, m: ["--seconds", "-2"], r"--seconds -2.0: expected a number above 0"),
    ("fps nan", lambda t, m: ["--fps", "nan"], r"--fps nan: expected a finite number"),
    ("fps 0", lambda t, m: ["--fps", "0"], r"--fps 0.0: expected a number above 0"),
    ("width 0", lambda t, m: ["--width", "0"], r"--width 0: expected at least 1"),
    ("height negative", lambda t, m: ["--height", "-16"], r"--height -16: expected at least 1"),
    ("frames 0", lambda t, m: ["--frames", "0"], r"--frames 0: expected at least 1"),
    ("chunks 0", lambda t, m: ["--chunks", "0"], r"--chunks 0: expected at least 1"),
    ("window 0", lambda t, m: ["--window", "0"], r"--window 0: expected at least 1"),
    ("sink negative", lambda t, m: ["--sink", "-1"], r"--sink -1: expected at least 0"),
    ("chunk-frames 0", lambda t, m: ["--chunk-frames", "0"], r"--chunk-frames 0: expected at least 1"),
    ("steps nan", lambda t, m: ["--steps", "nan,500"], r"--steps 'nan,500': every step must lie in"),
    # wrong kinds of settings stored in a file
    ("stored chunk_frames=-3", lambda t, m: _files(m, m["dir"] / "chunk_minus_3.safetensors") + TINY,
     r"--checkpoint .*chunk_minus_3\.safetensors: its sf_stream metadata: invalid stream settings: chunk_frames=-3"),
    ("stored sf_stream not JSON", lambda t, m: _files(m, m["dir"] / "stream_garbage.safetensors") + TINY,
     r"stream_garbage\.safetensors: its sf_stream metadata is not valid \(JSONDecodeError"),
    ("stored shift of the wrong type", lambda t, m: _files(m, m["dir"] / "stream_wrong_type.safetensors") + TINY,
     r"stream_wrong_type\.safetensors: its sf_stream metadata: invalid stream settings: shift='high'"),
    # stream-state files
    ("state without 'state' metadata", lambda t, m: ["--resume-state", str(m["dir"] / "no_state_meta.safetensors")],
     r"--resume-state .*: metadata 'state' is missing or not a JSON object"),
    ("state with garbage metadata", lambda t, m: ["--resume-state", str(m["dir"] / "garbage_state_meta.safetensors")],
     r"metadata 'state' is missing or not a JSON object"),
    ("state with a bad field", lambda t, m: ["--resume-state", str(m["dir"] / "bad_field.safetensors")],
     r"invalid field\(s\) \['latent_width'\]"),
    ("state not a stream state", lambda t, m: ["--resume-state", str(m["checkpoint"])],
     r"metadata 'format' is None, expected 'sf_stream_state/1'"),
    # prompts
    ("prompt file not UTF-8", lambda t, m: ["--prompt-file", str(_bytes(t / "p.txt", b"a red \xff circle"))],
     r"--prompt-file .*p\.txt: not UTF-8 text \(byte 0xff at offset 6\); save the file as UTF-8"),
    ("prompt with undecodable bytes", lambda t, m: ["--prompt", "a red \udcff circle"],
     r"--prompt: the text is not valid UTF-8 \(undecodable byte at character 6\)"),
    ("prompt-at with undecodable bytes", lambda t, m: ["--prompt-at", "c0", "\udcfe"], r"--prompt-at c0: the text is not valid"),
    # devices
    ("device banana", lambda t, m: ["--device", "banana"], r"--device 'banana': not a device; expected cpu, cuda"),
    ("device meta", lambda t, m: ["--device", "meta"], r"--device meta: unsupported device type 'meta'"),
]
if not torch.cuda.is_available():
    UP_FRONT.append(("device cuda without CUDA", lambda t, m: ["--device", "cuda"],
                     r"--device cuda: CUDA is not available .*; use --device cpu"))


def _bytes(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in UP_FRONT], ids=[c[0] for c in UP_FRONT])
def test_refused_up_front_with_one_line(argv, pattern, models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argv(tmp_path, models)
    before = sorted(os.listdir(tmp_path))
    assert generate.main([*args, "--dry-run"]) == 2
    line = _one_error_line(capsys)
    assert re.search(pattern, line), line
    assert generate.main(args) == 2  # the real run too
    assert re.search(pattern, _one_error_line(capsys))
    assert sorted(os.listdir(tmp_path)) == before  # nothing created, nothing replaced


# ---------------------------------------------------------------------------------------------------
# Found once loading starts: one line, exit code 2, no half-written output left behind.

AT_RUN = [
    ("NaN weights", lambda t, m: _files(m, m["dir"] / "nan.safetensors") + TINY,
     r"chunk 0 holds NaN/Inf: --checkpoint .*nan\.safetensors has non-finite values in 'head\.head\.weight'; "
     r"the file is damaged.*; nothing was written"),
    ("Inf weights", lambda t, m: _files(m, m["dir"] / "inf.safetensors") + TINY,
     r"has non-finite values in 'blocks\.0\.ffn\.0\.weight'"),
    ("int64 weights", lambda t, m: _files(m, m["dir"] / "int64.safetensors") + TINY,
     r"checkpoint file .*int64\.safetensors: .*integer or boolean tensors.*'[a-z_.0-9]+' is int64"),
    ("bool weights", lambda t, m: _files(m, m["dir"] / "bool.safetensors") + TINY, r"'[a-z_.0-9]+' is bool"),
    ("state without context", lambda t, m: _files(m) + ["--resume-state", str(m["dir"] / "no_context.safetensors")],
     r"--resume-state .*no_context\.safetensors: the stream state has no 'context' tensor"),
    ("state from a model of another size", lambda t, m: _files(m) + ["--resume-state", str(m["dir"] / "toy_state.safetensors")],
     r"--resume-state .*toy_state\.safetensors: made with a different model: dim=\d+ \(this model: 32\)"),
    ("state from other weights of the same shape",
     lambda t, m: _files(m, m["dir"] / "other_weights.safetensors") + ["--resume-state", str(m["dir"] / "tiny_state.safetensors")],
     r"made with other weights of the same shape \(the sampled weights differ from this checkpoint's\)"),
    ("state at another width", lambda t, m: _files(m) + ["--width", "64", "--height", "32", "--resume-state",
                                                         str(m["dir"] / "tiny_state.safetensors")],
     r"the stream is 4x4 latent pixels, this run asks for 8x4; continue it at the size it was made at"),
    ("unwritable location", lambda t, m: ["--out", "/proc/sf_no_such_dir/out.mp4"], r"--out /proc/.*: cannot create it"),
    ("1 MB prompt with an unknown word", lambda t, m: ["--prompt", "a red circle moves left " + "blorp " * 200_000],
     r"unknown words \['blorp'"),
]


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in AT_RUN], ids=[c[0] for c in AT_RUN])
def test_refused_at_run_with_one_line(argv, pattern, models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argv(tmp_path, models)
    out, state = tmp_path / "out.mp4", tmp_path / "state.safetensors"
    outputs = ["--save-state", str(state)] + ([] if "--out" in args else ["--out", str(out)])
    assert generate.main([*args, "--chunks", "2", *outputs]) == 2
    line = _one_error_line(capsys)
    assert re.search(pattern, line), line
    assert len(line) < 600  # no message repeats a whole prompt or tensor
    assert os.listdir(tmp_path) == []  # the claimed outputs got nothing and are gone, no temporary file


def test_dry_run_shows_a_long_prompt_cut_short(capsys):
    assert generate.main(["--prompt", "a red circle " * 100_000, "--dry-run"]) == 0
    shown = next(l for l in capsys.readouterr().out.splitlines() if "prompt:" in l)
    assert "a red circle a red" in shown and len(shown) < 100


def test_resume_continues_at_the_size_the_stream_was_made_at(models, tmp_path, capsys):
    state = models["dir"] / "tiny_state.safetensors"
    assert generate.main([*_files(models), "--resume-state", str(state), "--dry-run"]) == 0
    assert re.search(r"size: 32x32", capsys.readouterr().out)


# ---------------------------------------------------------------------------------------------------
# Concurrent runs and SIGTERM; disk full (a file-size limit and /dev/full give real write errors)


def _env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "SF_CACHE_DIR": str(tmp_path / "c"),
            "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _generate(args, tmp_path, **kw):
    return subprocess.run([sys.executable, "-m", "sf_core.generate", *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300, **kw)


def test_a_second_run_on_the_same_out_is_refused_and_sigterm_keeps_every_frame(tmp_path, capsys):
    out, state = tmp_path / "live.mp4", tmp_path / "live.safetensors"
    first = subprocess.Popen([sys.executable, "-m", "sf_core.generate", "--until-stopped", "--out", str(out),
                              "--save-state", str(state)], cwd=tmp_path, env=_env(tmp_path), stderr=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:
            if line.startswith("chunk 1:"):
                break
        for same in (["--out", str(out)], ["--out", str(tmp_path / "b.mp4"), "--save-state", str(state)]):
            assert generate.main(["--chunks", "1", *same]) == 2
            assert "already exists" in _one_error_line(capsys)
            assert generate.main(["--chunks", "1", *same, "--overwrite"]) == 2
            assert "another run is writing it right now" in _one_error_line(capsys)
        assert not (tmp_path / "b.mp4").exists()
        first.send_signal(signal.SIGTERM)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert "SIGTERM: stopping after the chunk in progress" in stderr
    written = int(re.search(r"wrote (\d+) frames", stdout).group(1))
    assert written >= 6 and read_video(out)[0].shape[0] == written
    assert read_header(state)["info"]["frames_written"] == written  # the placeholder became the state


def test_sigterm_while_loading_leaves_no_empty_outputs(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "sf_core.generate", "--chunks", "1", "--out", "v.mp4",
                             "--save-state", "s.safetensors"], cwd=tmp_path, env=_env(tmp_path),
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("model:"):  # printed just before the outputs are claimed and the model loads
                proc.send_signal(signal.SIGTERM)
                break
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    left = sorted(p for p in os.listdir(tmp_path) if p != "c")
    if proc.returncode == 130:  # stopped outside the chunk loop: nothing claimed is left behind empty
        assert "error: interrupted outside a chunk" in stderr and "s.safetensors" not in left
        assert left == [] or "wrote 3 frames" in stdout and read_video(tmp_path / "v.mp4")[0].shape[0] == 3
    else:  # the signal arrived during chunk 0 or the state's write: both finished
        assert proc.returncode == 0 and left == ["s.safetensors", "v.mp4"], stderr
        assert read_video(tmp_path / "v.mp4")[0].shape[0] == 3


def test_exclusive_claims_leave_no_trace_when_nothing_was_written(tmp_path):
    claim = claim_file("--out", tmp_path / "x.mp4", overwrite=False)
    with pytest.raises(RuntimeError, match="already exists"):
        claim_file("--out", tmp_path / "x.mp4", overwrite=False)
    with pytest.raises(RuntimeError, match="another run is writing"):
        claim_file("--out", tmp_path / "x.mp4", overwrite=True)
    claim.release(used=False)
    assert not (tmp_path / "x.mp4").exists()


def test_disk_full_for_the_mp4_keeps_every_complete_frame(tmp_path):
    proc = _generate(["--until-stopped", "--out", "v.mp4"], tmp_path, preexec_fn=_limit_file_size(8000))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    kept = int(re.search(r"error: writing v\.mp4 failed \(File too large\); it keeps the first (\d+) frame", line).group(1))
    assert kept >= 3 and read_video(tmp_path / "v.mp4")[0].shape[0] == kept == count_frames(tmp_path / "v.mp4")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_disk_full_for_a_png_removes_its_temporary_file(tmp_path):
    png = tmp_path / "png"
    png.mkdir()
    os.symlink("/dev/full", png / ".frame_000012.png.tmp")  # writing frame 12 gets ENOSPC from the kernel
    proc = _generate(["--chunks", "3", "--out", "v.mp4", "--png-dir", "png"], tmp_path)
    assert proc.returncode == 2
    assert re.search(r"error: writing png/frame_000012\.png failed \(No space left on device\); png keeps the 12 "
                     r"frame\(s\) before it", proc.stderr)
    assert sorted(os.listdir(png)) == [f"frame_{i:06d}.png" for i in range(12)]
    assert read_video(tmp_path / "v.mp4")[0].shape[0] == 9  # chunk 0 (frames 0-8): its mp4 frames are complete


def test_disk_full_for_the_state_keeps_the_video(tmp_path):
    proc = _generate(["--chunks", "2", "--out", "v.mp4", "--save-state", "s.safetensors"], tmp_path,
                     preexec_fn=_limit_file_size(100_000))  # the mp4 is ~20 kB, the state ~500 kB
    assert proc.returncode == 2
    assert re.search(r"error: --save-state s\.safetensors: cannot write it \(File too large\); the stream state is "
                     r"lost, the video v\.mp4 is complete", proc.stderr)
    assert read_video(tmp_path / "v.mp4")[0].shape[0] == 9 + 12
    assert sorted(os.listdir(tmp_path)) == ["c", "v.mp4"] or sorted(os.listdir(tmp_path)) == ["v.mp4"]


FLOAT_OPTIONS = [a.option_strings[0] for a in generate.build_parser()._actions if a.type is float]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("option", FLOAT_OPTIONS)
def test_every_float_option_refuses_non_finite_values(option, value, capsys):
    """argparse takes 'nan' and 'inf' as floats: every float option (also ones added later) must refuse them."""
    assert generate.main([f"{option}={value}", "--dry-run"]) == 2
    assert option in _one_error_line(capsys)


# ---------------------------------------------------------------------------------------------------
# Training checkpoints: a damaged latest step falls back to the newest intact one, and says so


def _train(out: Path, steps: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sf_core.train", "--config", str(Path(ROOT) / "sf_core/train/configs/tiny_dmd.yaml"),
           f"run.output_dir={out}", f"run.max_steps={steps}", "run.checkpoint_every=2", "run.keep_checkpoints=0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(out.parent), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def test_truncated_latest_checkpoint_falls_back_and_resumes_exactly(tmp_path):
    damaged, clean = tmp_path / "damaged", tmp_path / "clean"
    _train(damaged, 4)
    _truncate(damaged / "checkpoints" / "step_00000004" / "generator.safetensors")
    proc = _train(damaged, 6)
    assert re.search(r"checkpoint step_00000004 is unusable: .*generator\.safetensors is truncated \(\d+ bytes, "
                     r"its header describes \d+\)", proc.stderr)
    assert "resuming from step_00000002, the newest intact checkpoint" in proc.stderr
    _train(clean, 6)
    for name in ("generator", "critic", "optim_generator"):
        a = load_file(str(damaged / "checkpoints" / "step_00000006" / f"{name}.safetensors"))
        b = load_file(str(clean / "checkpoints" / "step_00000006" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert checkpoint_problem(damaged / "checkpoints" / "step_00000004") is None  # saved again on the way


@pytest.mark.parametrize("override, pattern", [
    ("optim.lr_generator=nan", r"optim\.lr_generator: expected a finite number, got nan"),
    ("optim.grad_clip_generator=inf", r"optim\.grad_clip_generator: expected a finite number, got inf"),
    ("ema.decay=-inf", r"ema\.decay: expected a finite number"),
    ("run.output_dir={tmp}/f.txt/run", r"run\.output_dir .*f\.txt is a file, not a folder"),
])
def test_training_config_refuses_non_finite_numbers_and_impossible_output(override, pattern, tmp_path, monkeypatch):
    from sf_core.train.config import TrainConfigError, load_config
    _touch(tmp_path / "f.txt")
    monkeypatch.chdir(ROOT)  # the tiny config's prompts are relative to the repository
    with pytest.raises(TrainConfigError, match=pattern):
        load_config(Path(ROOT) / "sf_core/train/configs/tiny_dmd.yaml", [override.format(tmp=tmp_path)])


def test_damaged_checkpoints_are_named_and_never_loaded(tmp_path):
    net = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(net.parameters())
    rng = seed_everything(0, 0)
    for step in (2, 4):
        save_checkpoint(tmp_path, step, ctx=CPU, modules={"generator": net}, optimizers={"generator": opt}, ema=None,
                        data_state={}, rng=rng)
    generator = tmp_path / "step_00000004" / "generator.safetensors"
    data = generator.read_bytes()
    generator.write_bytes(data[:8] + b"{garbage" + data[16:])  # a damaged header, the right size
    with pytest.raises(ResumeError, match=r"checkpoint file .*step_00000004/generator\.safetensors is unreadable"):
        load_checkpoint(tmp_path / "step_00000004", ctx=CPU, modules={"generator": net},
                        optimizers={"generator": opt}, rng=rng)
    path, notes = resume_checkpoint(tmp_path)
    assert path.name == "step_00000002" and "unreadable header" in notes[0]
    _truncate(tmp_path / "step_00000002" / "optim_generator.safetensors")
    with pytest.raises(ResumeError, match=r"no usable checkpoint in .*step_00000004 .*step_00000002 is unusable: "
                                          r".*optim_generator\.safetensors is truncated"):
        resume_checkpoint(tmp_path)


def test_checkpoint_files_and_folders_are_fsynced_before_they_are_named(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)  # the real fsync runs; we only note what it was given
    net = torch.nn.Linear(4, 4)
    final = save_checkpoint(tmp_path, 2, ctx=CPU, modules={"generator": net}, optimizers={}, ema=None,
                            data_state={}, rng=seed_everything(0, 0))
    tmp = str(tmp_path / ".step_00000002.tmp")
    for name in os.listdir(final):  # each file under its temporary name, then the folder holding it
        assert any(re.fullmatch(re.escape(tmp) + rf"/\.{re.escape(name)}\..*tmp", s) for s in synced), name
    assert synced.count(tmp) >= len(os.listdir(final)) and str(tmp_path) in synced


@pytest.mark.parametrize("output, pattern", [
    (lambda t: _touch(t / "f.txt") / "x.safetensors", r"f\.txt is a file, not a folder"),
    (lambda t: t, r"is a folder; give a file name"),
])
def test_convert_checks_its_output_before_reading_the_input(output, pattern, models, tmp_path, capsys):
    from sf_core.weights import convert
    assert convert.main([str(models["checkpoint"]), str(output(tmp_path))]) == 1
    assert re.search(pattern, _one_error_line(capsys))


# ---------------------------------------------------------------------------------------------------
# Stream states in the library (the nodes call the same checks)


def test_weights_fingerprint_tells_models_apart_but_not_dtypes_or_fp8_variants():
    import copy

    from sf_core.speed.fp8 import simulate_fp8_weights_
    from sf_core.speed.settings import SpeedSettings, accelerate
    from sf_core.weights.fingerprint import same_weights, weights_fingerprint
    model = randomize(CausalWanModel(TINY_GENERATE_DIT, attention="sdpa"), seed=1)
    fp8 = copy.deepcopy(model)
    assert simulate_fp8_weights_(fp8) > 0
    ours = weights_fingerprint(model)
    for variant in (copy.deepcopy(model).to(torch.bfloat16), copy.deepcopy(model).to(torch.float16), fp8,
                    accelerate(model, SpeedSettings("safe"))):
        assert same_weights(ours, weights_fingerprint(variant))
    assert weights_fingerprint(model.to(torch.float16)) != ours  # not equal, only the same up to rounding
    other = randomize(CausalWanModel(TINY_GENERATE_DIT, attention="sdpa"), seed=2)
    assert not same_weights(ours, weights_fingerprint(other))
    assert not same_weights(ours, "garbage") and not same_weights(ours, ours[:-4])


def test_state_check_names_what_differs(models):
    from sf_core.pipeline import StreamingPipeline
    from sf_core.state import StateError, StreamState
    from sf_core.weights.checkpoint import load_model
    model, stream = load_model(models["checkpoint"])
    state = StreamState.load(models["dir"] / "tiny_state.safetensors")
    state.check_compatible(model, stream, "s", (4, 4))  # the model it was made with: fine
    other, _ = load_model(models["dir"] / "other_weights.safetensors")
    with pytest.raises(StateError, match="s: made with other weights of the same shape"):
        state.check_compatible(other, stream, "s")
    with pytest.raises(StateError, match="the stream was made with window=-1, this run has window=6"):
        state.check_compatible(model, StreamConfig(window=6), "s")
    fresh = StreamingPipeline(model, stream).start(torch.zeros(1, 4, TINY_GENERATE_DIT.text_dim), 32, 32)
    assert fresh.info["weights"] == state.info["weights"]  # the CLI (behind its speed wrapper) stored the same



def test_a_signal_while_outputs_are_claimed_leaves_no_file(tmp_path, monkeypatch):
    """SIGTERM right after a claim created its file (before the run recorded it): the file is still removed.

    The signal is sent from another thread, so the kernel may deliver it to any thread of the process (as in a
    full test run, where other threads exist): blocking it in the main thread alone would not hold it."""
    import threading

    from sf_core.generate import outputs as run_outputs
    real_claim = run_outputs.outputs.claim_file

    go, sent = threading.Event(), threading.Event()

    def send():   # a thread started before the claim: its signal mask is not the main thread's
        go.wait(30)
        os.kill(os.getpid(), signal.SIGTERM)
        sent.set()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()

    def claim_then_signal(*args, **kwargs):
        claim = real_claim(*args, **kwargs)
        go.set()
        sent.wait(30)
        return claim

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_outputs.outputs, "claim_file", claim_then_signal)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_outputs.RunOutputs(tmp_path / "v.mp4", None, tmp_path / "s.safetensors", None,
                                   overwrite=False).open(fps=8)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(os.listdir(tmp_path)) == []
