"""The multi-seed Table-2 summary: means ± s.d. over seeds, per-seed winners, the report block."""
import json

import pytest

from sf_core.toy import seeds


def _run(seed: int, errors: dict[str, float]) -> dict:
    est = lambda v: {"mean": v, "low": v, "high": v, "n": 8}
    students = {key: {"label": key, "method": key.rsplit("_c", 1)[0], "chunk": 3, "rolling_trick": False,
                      "metrics": {"1": {m: est(v if m == "frame_error" else 0.5) for m, _ in seeds.COLUMNS}}}
                for key, v in errors.items()}
    return {"meta": {"profile": {"name": "quick", "seed": seed, "dmd_steps": 120, "eval_samples": 8,
                                 "eval_lengths": [1], "frames": 9}}, "students": students}


def test_means_spreads_and_winners(tmp_path):
    runs = [_run(0, {"tf_dmd_c3": 0.10, "self_forcing_c3": 0.12}), _run(1, {"tf_dmd_c3": 0.14, "self_forcing_c3": 0.11}),
            _run(2, {"tf_dmd_c3": 0.15, "self_forcing_c3": 0.13})]
    assert seeds.winners(runs, 3, "1") == {"tf_dmd_c3": 1, "self_forcing_c3": 2}
    text = seeds.seeds_markdown(runs, "cmd")
    assert "| tf_dmd_c3 | chunk-wise (3) | 0.130 ± 0.026 |" in text and "| 1 / 3 |" in text
    assert "| self_forcing_c3 | chunk-wise (3) | 0.120 ± 0.010 |" in text and "| 2 / 3 |" in text
    for i, r in enumerate(runs):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}" / "results.json").write_text(json.dumps(r))
    report = tmp_path / "r.md"
    report.write_text("intro\n" + seeds.SEEDS_START + "old" + seeds.SEEDS_END + "\nafter\n")
    assert seeds.main([str(tmp_path / f"s{i}") for i in range(3)] + ["--report", str(report)]) == 0
    out = report.read_text()
    assert out.startswith("intro\n") and out.endswith("after\n") and "old" not in out and "2 / 3" in out


def test_runs_of_different_students_are_refused(tmp_path):
    for i, errors in enumerate(({"tf_dmd_c3": 0.1}, {"self_forcing_c3": 0.1})):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}" / "results.json").write_text(json.dumps(_run(i, errors)))
    with pytest.raises(ValueError, match="trained different students"):
        seeds.load_runs([tmp_path / "s0", tmp_path / "s1"])
