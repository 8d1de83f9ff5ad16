"""Where a toy student follows its prompt and where it does not: the exact metrics of `sf_core.toy.metrics`
split by the number of objects the prompt names (1, 2, 3), on held-out prompts, at 1× and 10× the training
length. The streams are those `python -m sf_core.toy.reproduce` evaluates a self-forcing student on: 4 denoising
steps, the global cache at 1×, a rolling window of training length − chunk beyond.

    python benchmarks/toy_by_count.py [--model FILE --decoder FILE] [--per-count 32] [--start 20000] [--lengths 1,10]

Default files: the embedded model (sf_core/toy/assets/default). The prompts are the first `--per-count` scenes
with each object count of the held-out evaluation stream (scene seed 1 000 000, never trained on) from scene
`--start` on; 20 000 keeps them apart from the `reproduce` tables' own held-out prompts (scenes 0 .. 63).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sf_core.toy.autoencoder import load_autoencoder  # noqa: E402
from sf_core.toy.latents import AutoencoderSpace  # noqa: E402
from sf_core.toy.metrics import evaluate, summarize  # noqa: E402
from sf_core.toy.reproduce import EVAL_SEED, PROFILES, Run, eval_window, stream_latents  # noqa: E402
from sf_core.toy.world import MAX_OBJECTS, sample_scene  # noqa: E402
from sf_core.weights.checkpoint import load_model  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "sf_core/toy/assets/default"
COLUMNS = ("adherence", "shape_accuracy", "colour_accuracy", "motion_accuracy", "presence")


def prompts_by_count(per_count: int, start: int, seed: int = EVAL_SEED) -> dict[int, list[str]]:
    """count -> the first `per_count` prompts naming that many objects, scenes `start`, `start` + 1, ... of `seed`."""
    found: dict[int, list[str]] = {n: [] for n in range(1, MAX_OBJECTS + 1)}
    index = start
    while any(len(p) < per_count for p in found.values()):
        scene = sample_scene(seed, index)
        group = found[len(scene.spec.objects)]
        if len(group) < per_count:
            group.append(scene.prompt)
        index += 1
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ASSETS / "model.safetensors", help="student checkpoint")
    ap.add_argument("--decoder", type=Path, default=ASSETS / "decoder.safetensors", help="its toy autoencoder")
    ap.add_argument("--per-count", type=int, default=32, help="prompts per object count")
    ap.add_argument("--start", type=int, default=20_000, help="first scene of the held-out stream searched")
    ap.add_argument("--lengths", default="1,10", help="multiples of the training length (9 latent frames)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the estimates here")
    args = ap.parse_args(argv)
    lengths = [int(v) for v in args.lengths.split(",")]
    if args.per_count < 2 or min(lengths) < 1:
        ap.error(f"--per-count {args.per_count} / --lengths {args.lengths}: need >= 2 prompts and lengths >= 1")
    for flag, path in (("--model", args.model), ("--decoder", args.decoder)):
        if not path.is_file():
            ap.error(f"{flag} {path}: no such file")
    torch.set_num_threads(args.threads)

    space = AutoencoderSpace(load_autoencoder(args.decoder, torch.device("cpu")))
    model, stream = load_model(args.model)
    model.eval()
    chunk = stream.chunk_frames
    profile = replace(PROFILES["default"], latent_channels=space.channels)
    with tempfile.TemporaryDirectory() as scratch:   # Run keeps a checkpoint folder; nothing is saved here
        run = Run(profile, "cpu", Path(scratch))
        run.use_space(space, pool=False)
    results: dict[str, dict] = {}
    print(f"model {args.model}, decoder {args.decoder}; {args.per_count} held-out prompts per count from scene "
          f"{args.start}; mean ± half-width of the 95% t-interval over clips\n")
    print("| objects | length | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for count, prompts in prompts_by_count(args.per_count, args.start).items():
        for mult in lengths:
            window = -1 if mult == 1 else eval_window(profile.frames, chunk)
            latents = stream_latents(run, model, run.stream_config(chunk, False, window), prompts,
                                     profile.frames * mult, seed=profile.seed + 100)
            est = summarize(evaluate(run.pixels(latents), prompts))
            results[f"{count}/{mult}x"] = {c: asdict(est[c]) for c in COLUMNS}
            cells = [f"{est[c].mean:.3f} ± {(est[c].high - est[c].low) / 2:.3f}" for c in COLUMNS]
            print(f"| {count} | {mult}× | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
