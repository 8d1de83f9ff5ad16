"""What the reliability checks cost at Wan2.1-1.3B, 832×480 (docs/reliability.md).

Per chunk: `check_finite` on the chunk's latents [1, 3, 16, 60, 104] and its decoded frames
[12, 3, 480, 832]. Per stream start / resume: `weights_fingerprint` of the 1.3B DiT. Only after a
failure: `first_nonfinite` (a scan of every weight). The DiT's weights are zeros (no check's cost
depends on the values, and finite values make the scan read all of them). Interleaved repeats; process CPU time on a CPU.

    python benchmarks/reliability_checks.py --repeats 5
    python benchmarks/reliability_checks.py --device cuda --dtype bf16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.repeats import Stopwatch, rounds, spread  # noqa: E402
from sf_core.config import DTYPES, WAN_1_3B  # noqa: E402
from sf_core.model import CausalWanModel  # noqa: E402
from sf_core.numerics import check_finite, first_nonfinite  # noqa: E402
from sf_core.weights.fingerprint import weights_fingerprint  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-scan", action="store_true", help="skip the full weight scan (slow on a CPU)")
    args = p.parse_args(argv)
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    with torch.device("meta"):
        model = CausalWanModel(WAN_1_3B)
    model = model.to_empty(device=dev).to(dtype)
    for t in model.state_dict().values():  # finite, so the scan reads every weight
        t.zero_()
    latents = torch.randn(1, 3, 16, 60, 104, device=dev, dtype=dtype)
    frames = torch.rand(12, 3, 480, 832, device=dev, dtype=torch.float32 if dev.type == "cpu" else dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    jobs = {
        "check_finite(latents) per chunk": lambda: check_finite("chunk", latents, {}, dtype),
        "check_finite(frames) per chunk": lambda: check_finite("frames", frames, {}, dtype),
        "weights_fingerprint per start": lambda: weights_fingerprint(model),
    }
    if not args.no_scan:
        jobs["first_nonfinite (after a failure)"] = lambda: first_nonfinite(model)
    for fn in jobs.values():  # warm-up
        fn()
    times = {name: [] for name in jobs}
    for _, name in rounds(list(jobs), args.repeats):
        sync()
        watch = Stopwatch()
        jobs[name]()
        sync()
        sample = watch.read()
        times[name].append(sample.cpu if dev.type == "cpu" else sample.wall)
    params = sum(t.numel() for t in model.state_dict().values())
    print(f"Wan2.1-1.3B ({params / 1e9:.2f} B values, {len(model.state_dict())} tensors), 832x480, "
          f"{args.dtype} on {dev}; ms, median (min-max) of {args.repeats} interleaved repeats\n")
    print(f"| {'check':<36} | {'ms':>24} |\n|{'-' * 38}|{'-' * 26}|")
    for name, values in times.items():
        print(f"| {name:<36} | {spread(values, '{:.3f}', 1000):>24} |")


if __name__ == "__main__":
    main()
