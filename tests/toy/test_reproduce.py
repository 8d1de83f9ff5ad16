"""The Table 2 reproduction: TF/DF + DMD inputs, the report format, a CI-sized end-to-end run, and the
shipped default checkpoint (trained by that command) against an untrained model of the same shape."""
import json
import math
from dataclasses import replace

import pytest
import torch

from sf_core.generate.bundle import decoder_class, load_bundle
from sf_core.media.timing import decoder_frame_counts
from sf_core.generate.files import DEFAULT_ASSETS, default_model, from_manifest
from sf_core.weights.checkpoint import load_model
from sf_core.weights.files import read_safetensors
from sf_core.toy.autoencoder import load_autoencoder, save_autoencoder
from sf_core.config import ModelConfig
from sf_core.model import CausalWanModel
from sf_core.noise import SeededNoise
from sf_core.pipeline import StreamingPipeline
from sf_core.toy import reproduce
from sf_core.toy.forcing_dmd import ForcingDMDObjective
from sf_core.toy.metrics import evaluate
from sf_core.toy.world import sample_scenes
from sf_core.train.objectives import ObjectiveConfig, StepInfo, TrainBatch

TINY = ModelConfig(dim=32, ffn_dim=64, num_heads=1, num_layers=1, in_dim=12, out_dim=12, text_dim=16,
                   freq_dim=32, text_len=8)


def _objective(mode):
    torch.manual_seed(0)
    gen, teacher, critic = (CausalWanModel(TINY, attention="sdpa") for _ in range(3))
    cfg = ObjectiveConfig(latent_shape=(6, 12, 4, 4), chunk_frames=3, critic_updates_per_generator=1)
    return ForcingDMDObjective(mode, cfg, gen, teacher.requires_grad_(False), critic)


def _info():
    return StepInfo(0, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))


@pytest.mark.parametrize("mode", ["teacher_forcing", "diffusion_forcing"])
def test_forcing_dmd_conditions_each_chunk_on_earlier_ground_truth_only(mode):
    obj = _objective(mode)
    real = torch.randn(2, 6, 12, 4, 4, generator=torch.Generator().manual_seed(3))
    ctx = torch.randn(2, 5, 16)
    out = obj.generate(TrainBatch(ctx, None, latents=real), _info(), with_grad=False)
    later_changed = real.clone()
    later_changed[:, 3:] += 1.0                      # the second chunk's ground truth
    out_later = obj.generate(TrainBatch(ctx, None, latents=later_changed), _info(), with_grad=False)
    earlier_changed = real.clone()
    earlier_changed[:, :3] += 1.0                    # the first chunk's ground truth
    out_earlier = obj.generate(TrainBatch(ctx, None, latents=earlier_changed), _info(), with_grad=False)
    assert out.shape == real.shape
    torch.testing.assert_close(out_later, out, atol=1e-5, rtol=1e-5)          # nothing looks ahead
    torch.testing.assert_close(out_earlier[:, :3], out[:, :3], atol=1e-5, rtol=1e-5)  # own GT never seen
    assert (out_earlier[:, 3:] - out[:, 3:]).abs().max() > 1e-3                # the context is ground truth


def test_forcing_dmd_losses_reach_generator_and_critic():
    obj = _objective("teacher_forcing")
    batch = TrainBatch(torch.randn(2, 5, 16), None, latents=torch.randn(2, 6, 12, 4, 4))
    loss, metrics = obj.generator_loss(batch, _info())
    loss.backward()
    assert math.isfinite(metrics["dmd_loss"])
    assert obj.generator.head.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in obj.critic.parameters())
    closs, _ = obj.critic_loss(batch, _info())
    closs.backward()
    assert obj.critic.head.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="ground-truth latents"):
        obj.generate(TrainBatch(batch.context, None), _info(), with_grad=False)


def test_report_replaces_only_the_generated_block(tmp_path):
    est = {"mean": 0.5, "low": 0.4, "high": 0.6, "n": 4}
    metrics = {k: est for k, _ in reproduce.TABLE_METRICS}
    profile = reproduce.PROFILES["smoke"]
    results = {"meta": {"command": "cmd", "profile": {**profile.__dict__}, "hardware": "hw", "wall_time_s": 60.0,
                        "stage_times_s": {"teacher": 30.0}},
               "references": {n: {"label": n, "metrics": metrics} for n in ("ground_truth", "teacher")},
               "students": {s.key: {"label": s.label, "chunk": s.chunk, "method": s.method,
                                    "metrics": {str(m): metrics for m in profile.eval_lengths}}
                            for s in reproduce.students()}}
    path = tmp_path / "r.md"
    path.write_text("# Title\n\nhand-written intro\n\n" + reproduce.RESULTS_START + "old" + reproduce.RESULTS_END
                    + "\n\nhand-written analysis\n")
    reproduce.write_report(results, path)
    text = path.read_text()
    assert "hand-written intro" in text and "hand-written analysis" in text and "old" not in text
    assert text.count(reproduce.RESULTS_START) == 1 and "0.500 ± 0.100" in text
    rows = [line for line in text.splitlines() if line.startswith("| Self forcing + DMD |")]
    assert len(rows) == 2 * len(profile.eval_lengths)


@pytest.mark.slow
def test_smoke_reproduction_runs_end_to_end(tmp_path):
    report, default = tmp_path / "reproduction.md", tmp_path / "default"
    assert reproduce.main(["--profile", "smoke", "--out", str(tmp_path / "run"), "--report", str(report),
                           "--export-default", str(default)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["students"]) == {s.key for s in reproduce.students()}
    text = report.read_text()
    lengths = reproduce.PROFILES["smoke"].eval_lengths
    assert text.count("| model | chunk | length |") == len(lengths)
    assert text.count("| Self forcing + DMD + rolling trick |") == 2 * len(lengths)
    assert set(results["references"]) == {"ground_truth", "teacher", "untrained"}
    assert text.count("| Untrained DiT, same sampler (chance level) |") == 1
    for r in results["students"].values():
        for mult in map(str, lengths):
            assert math.isfinite(r["metrics"][mult]["frame_error"]["mean"])
        model, stream = load_model(tmp_path / "run" / r["checkpoint"])
        assert stream.chunk_frames == r["chunk"] and stream.window > 0
    files = from_manifest(default)
    model, stream = load_model(files.checkpoint)
    assert files.text_kind == "toy" and files.decoder_kind == "toy_pixels" and model.config.in_dim == 12


@pytest.mark.slow
def test_smoke_reproduction_in_the_autoencoder_space_exports_a_loadable_bundle(tmp_path):
    default = tmp_path / "default"
    assert reproduce.main(["--profile", "smoke_autoencoder", "--only", "self_forcing_c3_rolling",
                           "--out", str(tmp_path / "run"), "--report", str(tmp_path / "r.md"),
                           "--export-default", str(default)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "Ground truth through the autoencoder" in (tmp_path / "r.md").read_text()
    assert math.isfinite(results["students"]["self_forcing_c3_rolling"]["metrics"]["2"]["adherence"]["mean"])
    files = from_manifest(default)
    assert files.decoder_kind == "toy_autoencoder" and files.defaults["width"] == 32
    bundle = load_bundle(files, "cpu", torch.float32, torch.float32)
    assert bundle.model.config.in_dim == bundle.decoder.latent_channels == 9
    config = bundle.decoder.model.config   # the profile's decoder stage replaced the first decoder
    assert (config.decoder_width, config.decoder_depth, config.outline_weight) == (16, 2, 8.0)
    assert (config.shape_code, config.motion_code, config.object_code) == (5.0, 5.0, 5.0)
    assert sorted(p.name for p in default.iterdir()) == ["decoder.safetensors", "manifest.json", "model.safetensors"]
    # scoring the run again (after a decoder refinement) keeps its training record and notes the rescoring
    assert reproduce.main(["--rescore", "--out", str(tmp_path / "run"), "--report", str(tmp_path / "r.md")]) == 0
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert again["meta"]["stage_times_s"] == results["meta"]["stage_times_s"] and "rescored" in again["meta"]
    assert "Scored again by `python -m sf_core.toy.reproduce --rescore" in (tmp_path / "r.md").read_text()
    # a second run trains its DiTs in a given latent space (--autoencoder: no autoencoder stage); the file differs
    # from what the profile would train (another normalisation), so a retrained one would not match it
    given = load_autoencoder(tmp_path / "run" / "checkpoints" / "autoencoder.safetensors")
    given.latent_std.mul_(1.5)
    first = save_autoencoder(given, tmp_path / "given.safetensors")
    assert reproduce.main(["--profile", "smoke_autoencoder", "--only", "self_forcing_c3_rolling", "--autoencoder",
                           str(first), "--out", str(tmp_path / "run2"), "--report", str(tmp_path / "r2.md")]) == 0
    reused = read_safetensors(tmp_path / "run2" / "checkpoints" / "autoencoder.safetensors")
    original = read_safetensors(first)
    assert reused[1] == original[1] and reused[0].keys() == original[0].keys()
    assert all(torch.equal(reused[0][k], original[0][k]) for k in original[0])
    with pytest.raises(SystemExit):   # a pixel-space profile has no autoencoder to take
        reproduce.main(["--profile", "smoke", "--autoencoder", str(first), "--out", str(tmp_path / "x")])


def test_negative_loss_weights_are_refused_before_any_training(tmp_path, capsys, monkeypatch):
    for flag in ("--object-weight", "--outline-weight", "--shape-code", "--motion-code", "--object-code"):
        with pytest.raises(SystemExit):
            reproduce.main(["--profile", "smoke", flag, "-2", "--out", str(tmp_path / "x")])
        assert f"{flag} -2: must be >= 0" in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    few = replace(reproduce.PROFILES["smoke_autoencoder"], latent_channels=4)   # too few for the motion code
    monkeypatch.setitem(reproduce.PROFILES, "smoke_autoencoder", few)
    with pytest.raises(SystemExit):
        reproduce.main(["--profile", "smoke_autoencoder", "--motion-code", "1", "--out", str(tmp_path / "x")])
    assert "needs latent_channels >= 6; got 4" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):   # the object code needs channels 6..8
        reproduce.main(["--profile", "smoke_autoencoder", "--latent-channels", "8", "--out", str(tmp_path / "x")])
    assert "object_code > 0 ties latent channels 6..8" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        reproduce.main(["--profile", "smoke_autoencoder", "--latent-channels", "0", "--out", str(tmp_path / "x")])
    assert "latent_channels 0; expected >= 1" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):   # a pixel-space profile has no latent channels to set
        reproduce.main(["--profile", "smoke", "--latent-channels", "24", "--out", str(tmp_path / "x")])
    assert "trains in pixel space" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_compiled_teacher_without_a_cpp_compiler_is_refused_before_any_training(tmp_path, capsys, monkeypatch):
    assert reproduce.PROFILES["default"].compile_teacher
    monkeypatch.setitem(reproduce.PROFILES, "smoke", replace(reproduce.PROFILES["smoke"], compile_teacher=True))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(SystemExit):
        reproduce.main(["--profile", "smoke", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert "'no-such-compiler-here'" in err and "--no-compile-teacher" in err and not (tmp_path / "x").exists()
    # --no-compile-teacher turns the profile's default off (and needs no compiler)
    assert reproduce.main(["--profile", "smoke", "--no-compile-teacher", "--only", "self_forcing_c3",
                           "--out", str(tmp_path / "run"), "--report", str(tmp_path / "r.md")]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["meta"]["profile"]["compile_teacher"] is False


def test_compiled_teacher_trains_through_torch_compile_to_the_eager_weights(tmp_path):
    """`compile_teacher` runs the teacher's training forward through torch.compile (a graph is compiled)
    and lands on the eager teacher's weights (same data, noise and updates; only kernel rounding differs)."""
    import torch._dynamo

    profile = replace(reproduce.PROFILES["smoke"], teacher_steps=3, teacher_lr=0.1)   # steps that move the weights
    eager = reproduce.train_teacher(reproduce.Run(profile, "cpu", tmp_path / "eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = reproduce.train_teacher(reproduce.Run(replace(profile, compile_teacher=True), "cpu", tmp_path / "c"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    torch.manual_seed(profile.seed)   # train_teacher's initialisation
    init = CausalWanModel(eager.config, attention="sdpa")
    moved = max((a - b).abs().max().item() for a, b in zip(eager.state_dict().values(), init.state_dict().values()))
    diff = max((a - b).abs().max().item() for a, b in zip(eager.state_dict().values(), compiled.state_dict().values()))
    assert moved > 1e-3 and diff < 1e-2 * moved, (moved, diff)


def _shipped_metrics(model, bundle, prompts, chunks):
    """Stream `prompts` through `model` with the shipped bundle's text encoder and decoder -> ToyMetrics."""
    h, w = default_model().defaults["height"], default_model().defaults["width"]
    pipe = StreamingPipeline(model, bundle.stream_config, spatial_stride=bundle.decoder.spatial_stride)
    state = pipe.start(bundle.encode(prompts), h, w, noise=SeededNoise(7), max_frames=chunks * 3)
    decoder = bundle.decoder.clone()
    decoder.reset()
    frames = torch.cat([decoder.decode_chunk(c.latents) for c in pipe.stream(state, chunks)], 1)
    return evaluate((frames + 1) / 2, prompts)


def test_shipped_default_beats_an_untrained_model():
    files = default_model()
    bundle = load_bundle(files, "cpu", torch.float32, torch.float32)
    shipped = sum(p.stat().st_size for p in DEFAULT_ASSETS.iterdir())
    assert shipped <= 10 * 2 ** 20, f"the embedded default is {shipped / 2 ** 20:.1f} MB, the budget 10 MB"
    prompts = [s.prompt for s in sample_scenes(8, seed=424242)]     # neither training nor evaluation prompts
    trained = _shipped_metrics(bundle.model, bundle, prompts, 3).clip
    torch.manual_seed(0)
    untrained = _shipped_metrics(CausalWanModel(bundle.model.config, attention="sdpa").eval(), bundle, prompts, 3).clip
    # the decoder turns any latent into blobs, so an untrained DiT's frames have "objects" too (presence ~0.7),
    # but of the wrong colours on a wrong background; the trained one draws the prompted objects
    assert trained["presence"].mean() > untrained["presence"].mean() + 0.1, (trained["presence"], untrained["presence"])
    assert trained["colour_accuracy"].nanmean() > untrained["colour_accuracy"].nanmean() + 0.3, (
        trained["colour_accuracy"], untrained["colour_accuracy"])
    assert trained["adherence"].mean() > untrained["adherence"].mean() + 0.1, (trained["adherence"], untrained["adherence"])
    assert trained["frame_error"].mean() < 0.85 * untrained["frame_error"].mean()
    assert trained["background_error"].mean() < 0.8 * untrained["background_error"].mean()


def test_generate_without_model_arguments_streams_the_shipped_toy_model(tmp_path, capsys):
    from sf_core.generate import cli as generate
    from sf_core.media.recording import read_video
    files = from_manifest(DEFAULT_ASSETS)
    _, stream = load_model(files.checkpoint)
    assert generate.main(["--chunks", "2", "--out", str(tmp_path / "d.mp4")]) == 0
    assert "embedded toy model" in capsys.readouterr().err
    frames, fps = read_video(tmp_path / "d.mp4")
    d = files.defaults
    first, later = decoder_frame_counts(decoder_class(files), stream.chunk_frames)   # 9, then 12 frames
    assert frames.shape == (first + later, d["height"], d["width"], 3) and fps == pytest.approx(d["fps"])


def test_longer_self_forcing_rollouts_reach_the_student_stage(tmp_path, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--profile", "smoke", "--rollout-frames", "4", "--out", str(tmp_path / "x")])
    assert "--rollout-frames: got 4" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert reproduce.main(["--profile", "smoke", "--rollout-frames", "12", "--only", "self_forcing_c3_rolling,tf_dmd_c3",
                           "--out", str(tmp_path / "run"), "--report", str(tmp_path / "r.md")]) == 0
    out = capsys.readouterr().out
    assert "self_forcing_c3_rolling: rollouts of 12 latent frames, DMD on the last 6" in out
    assert "tf_dmd_c3: rollouts" not in out   # teacher forcing has no rollout to lengthen
    assert json.loads((tmp_path / "run" / "results.json").read_text())["meta"]["profile"]["rollout_frames"] == 12
