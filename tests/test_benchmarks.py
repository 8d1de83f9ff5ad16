"""The GPU streaming benchmark: FLOP model against the reference figures, and a --tiny CPU smoke run."""
import json
import os
import subprocess
import sys

import pytest

from sf_core.config import WAN_1_3B

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from gpu_stream import dit_pass_flops, dit_video_flops  # noqa: E402


def test_flop_model_reproduces_the_reference_accounting():
    """selfforcing.md §8.2: 16.2 T for a chunk-0 pass, 40.4 T for chunk 6, ≈990 T per 81 frames (≈950 without
    the final cache pass)."""
    assert dit_pass_flops(WAN_1_3B, 4680, 4680) / 1e12 == pytest.approx(16.2, abs=0.05)
    assert dit_pass_flops(WAN_1_3B, 4680, 7 * 4680) / 1e12 == pytest.approx(40.4, abs=0.05)
    assert dit_video_flops(WAN_1_3B, 1560, 3, 7) / 1e12 == pytest.approx(990, rel=0.01)
    assert dit_video_flops(WAN_1_3B, 1560, 3, 7, final_cache_pass=False) / 1e12 == pytest.approx(950, rel=0.01)
    # frame-wise: ≈943 T
    assert dit_video_flops(WAN_1_3B, 1560, 1, 21) / 1e12 == pytest.approx(943, rel=0.01)


def _tiny_run(tmp_path, *extra):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_stream.py"), "--tiny", "--device", "cpu",
           "--chunks", "2", "--long-chunks", "3", "--window", "6", "--sink", "0", "--runs", "1", "--warmup", "0",
           "--json", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_tiny_run_writes_every_field(tmp_path):
    stdout, report = _tiny_run(tmp_path, "--fp8")
    assert "does not depend on weight values" in stdout
    assert "| configuration |" in stdout and "# speed safe: " in stdout
    assert {"note", "environment", "flops", "floor_s_at_800_tflops", "checks", "results", "options", "speeds"} <= set(report)
    # on a CPU neither level overlaps decoding, so there is no plain "safe" / "max" row
    expected = {"naive", "plain", "safe (seq)", "safe +taehv", "max (seq)", "max +taehv", "frame-wise", "rolling"}
    assert set(report["results"]) == expected
    for name, r in report["results"].items():
        assert {"fps", "first_frame_s", "seconds", "frames", "dit_ms", "decode_ms", "peak_mem_gib", "runs",
                "final_cache_pass_ms"} <= set(r)
        assert r["fps"] > 0 and r["first_frame_s"] > 0
    assert report["results"]["plain"]["frames"] == 9 + 12
    assert report["results"]["frame-wise"]["frames"] == 1 + 4 * 5
    assert len(report["results"]["plain"]["dit_ms"]) == 2 and len(report["results"]["rolling"]["dit_ms"]) == 3
    checks = report["checks"]
    # same work, same seed: the naive recompute and the output-preserving level reproduce the plain latents
    assert checks["naive vs plain (relative L2 of latents)"] < 1e-5
    assert checks["safe (seq) vs plain (relative L2 of latents)"] == 0
    assert 0 < checks["max (seq) vs plain (relative L2 of latents)"] < 1e-4  # fast RoPE in float32
    assert not any("frame-wise vs" in k or "rolling vs" in k for k in checks), "other work is not compared"
    assert 0 < checks["fp8 (simulated weights) vs unquantised, relative L2 of latents, random weights"] < 1


def test_final_cache_pass_is_measured_without_the_naive_row(tmp_path):
    _, report = _tiny_run(tmp_path, "--skip", "naive,frame-wise,rolling", "--speeds", "safe")
    assert set(report["results"]) == {"plain", "safe (seq)", "safe +taehv"}
    for name in report["results"]:
        assert report["checks"][f"final cache pass skipped by every row, DiT ms, {name}"] > 0


def test_time_budget_skips_rows_and_still_writes_the_report(tmp_path):
    stdout, report = _tiny_run(tmp_path, "--max-seconds", "0", "--fp8")
    assert report["results"] == {} and {"naive", "plain", "rolling", "fp8 check"} <= set(report["skipped"])
    assert "skipped (past --max-seconds)" in stdout


def test_toy_latent_signal_prints_one_row_per_change():
    """benchmarks/toy_latent_signal.py on the embedded autoencoder: every attribute change moves pixels and
    latents, and the 4-px shift is its own unit."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "toy_latent_signal.py"), "--scenes", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split(" | ")[0].lstrip("| "): [float(v) for v in line.strip(" |").split(" | ")[1:]]
            for line in proc.stdout.splitlines() if line.startswith("| ") and "RMS" not in line}
    assert len(rows) == 10 and "shape: circle -> square" in rows and "motion: static -> pulse" in rows
    assert rows["position: 4 px right"][3] == 1.0
    assert all(pixel > 0 and latent > 0 and gain > 0 for pixel, latent, gain, _ in rows.values())


def test_toy_train_speed_times_every_variant_against_eager():
    """benchmarks/toy_train_speed.py, one round of one step: a row per variant, eager is its own unit, and every
    variant's step time and teacher-stage estimate are positive."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "toy_train_speed.py"), "--threads", "1",
                           "--rounds", "1", "--steps", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split(" | ")[0].lstrip("| "): line.strip(" |").split(" | ")[1:]
            for line in proc.stdout.splitlines() if line.startswith("| ") and "variant" not in line}
    assert set(rows) == {"float32 eager", "bfloat16 autocast", "torch.compile"}
    assert rows["float32 eager"][1].startswith("1.00")
    assert all(float(ms.split()[0]) > 0 and float(stage) > 0 for ms, _, stage in rows.values())


def test_toy_by_count_scores_each_object_count_on_unseen_prompts(tmp_path):
    """benchmarks/toy_by_count.py on the embedded model: a row per object count and length, every estimate a
    proportion, and prompts that name exactly that many objects and are none of the reproduction's own."""
    from toy_by_count import prompts_by_count

    from sf_core.toy.reproduce import EVAL_SEED
    from sf_core.toy.world import parse_prompt, sample_scenes

    groups = prompts_by_count(3, 20_000)
    assert all(len(ps) == 3 and all(len(parse_prompt(p).objects) == n for p in ps) for n, ps in groups.items())
    own = {s.prompt for s in sample_scenes(64, EVAL_SEED)}
    assert set(groups) == {1, 2, 3} and not own & {p for ps in groups.values() for p in ps}
    out = tmp_path / "by_count.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "toy_by_count.py"), "--per-count", "2",
                           "--lengths", "1,2", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.strip(" |").split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "objects" not in line]
    assert [(r[0], r[1]) for r in rows] == [(n, m) for n in "123" for m in ("1×", "2×")]
    report = json.loads(out.read_text())
    assert set(report) == {f"{n}/{m}x" for n in (1, 2, 3) for m in (1, 2)}
    assert all(0 <= est["mean"] <= 1 and est["n"] == 2 for row in report.values() for est in row.values())


def test_toy_by_count_names_a_missing_file():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "toy_by_count.py"), "--model", "nope.safetensors"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--model nope.safetensors: no such file" in proc.stderr
