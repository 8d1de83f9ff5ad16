"""The Table 2 reproduction: TF/DF + DMD inputs, the report format, a CI-sized end-to-end run, and the
shipped default checkpoint (trained by that command) against an untrained model of the same shape."""
import json
import math

import pytest
import torch

from sf_core.generate.files import DEFAULT_ASSETS, from_manifest
from sf_core.weights.checkpoint import load_model
from sf_core.config import ModelConfig
from sf_core.model import CausalWanModel
from sf_core.noise import SeededNoise
from sf_core.pipeline import StreamingPipeline
from sf_core.toy import reproduce
from sf_core.toy.dataset import sample_batch
from sf_core.toy.forcing_dmd import ForcingDMDObjective
from sf_core.toy.metrics import evaluate_latents
from sf_core.toy.text import ToyTextEncoder
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
    for r in results["students"].values():
        for mult in map(str, lengths):
            assert math.isfinite(r["metrics"][mult]["frame_error"]["mean"])
        model, stream = load_model(tmp_path / "run" / r["checkpoint"])
        assert stream.chunk_frames == r["chunk"] and stream.window > 0
    files = from_manifest(default)
    model, stream = load_model(files.checkpoint)
    assert files.text_kind == "toy" and files.decoder_kind == "toy_pixels" and model.config.in_dim == 12


def _frame_error(model, stream, prompts, frames, height, width):
    text = ToyTextEncoder(**from_manifest(DEFAULT_ASSETS).text_options)
    pipe = StreamingPipeline(model, stream)
    state = pipe.start(text(prompts), height // 2 * 8, width // 2 * 8, noise=SeededNoise(7), max_frames=frames)
    latents = torch.cat([c.latents for c in pipe.stream(state, frames // stream.chunk_frames)], 1)
    return evaluate_latents(latents, prompts).clip["frame_error"]


def test_shipped_default_beats_an_untrained_model():
    files = from_manifest(DEFAULT_ASSETS)
    model, stream = load_model(files.checkpoint)
    assert files.checkpoint.stat().st_size < 8 * 2 ** 20
    h, w = files.defaults["height"], files.defaults["width"]
    prompts, _ = sample_batch(6, 1, seed=424242, height=h, width=w)
    frames = 3 * stream.chunk_frames
    trained = _frame_error(model.eval(), stream, prompts, frames, h, w)
    torch.manual_seed(0)
    untrained = _frame_error(CausalWanModel(model.config, attention="sdpa").eval(), stream, prompts, frames, h, w)
    # every single clip is better, and on average by a wide margin
    assert (trained < untrained).all(), (trained, untrained)
    assert trained.mean() < 0.7 * untrained.mean(), (trained, untrained)


def test_generate_without_model_arguments_streams_the_shipped_toy_model(tmp_path, capsys):
    from sf_core.generate import cli as generate
    from sf_core.media.recording import read_video
    files = from_manifest(DEFAULT_ASSETS)
    _, stream = load_model(files.checkpoint)
    assert generate.main(["--chunks", "2", "--out", str(tmp_path / "d.mp4")]) == 0
    assert "embedded toy model" in capsys.readouterr().err
    frames, fps = read_video(tmp_path / "d.mp4")
    d = files.defaults
    assert frames.shape == (2 * stream.chunk_frames, d["height"], d["width"], 3) and fps == pytest.approx(d["fps"])
