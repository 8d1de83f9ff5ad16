"""benchmarks/v2v_lora.py: the 1.3B FLOP table follows the strength rule, and the measured table runs."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_v2v_lora_benchmark_tables(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "v2v_lora.py"), "--dim", "64", "--layers", "1",
           "--size", "32x32", "--chunks", "2", "--repeats", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    passes = dict(re.findall(r"\| V2V strength ([\d.]+) \+ Wan VAE encoder \| (\d) \|", out))
    assert passes == {"1.0": "5", "0.9": "3", "0.7": "2", "0.0": "1"}   # steps at or below σ, + the cache pass
    assert "T2V = 4 steps + cache pass = 202.0 TFLOP" in out
    assert re.search(r"Unmerged LoRA: \+3\.03% of the block linears' FLOPs", out)
    rows = re.findall(r"^\| (T2V|V2V strength [\d.]+|T2V \+ (?:un)?merged LoRA r32) \| [\d.]+ \([\d.]+–[\d.]+\) \| ([\d.]+) \| "
                      r"([\d.]+) \|", out.split("Measured per-chunk time")[1], re.M)
    assert len(rows) == 7 and rows[0] == ("T2V", "1.00", "0.0")
    assert all(float(enc) > 0 for name, _, enc in rows if name.startswith("V2V") and not name.endswith("1.0"))
