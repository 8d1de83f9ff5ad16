"""How loudly does a toy latent space say what the prompt says? For random one-object scenes, the RMS change
of the latents (normalised: std 1 per channel) and of the pixels ([0, 1]) when one attribute of the scene
changes: shape, colour, position, size, background, motion, and their ratio (the autoencoder's gain). A DiT
trained with an MSE loss in latent space learns the loud attributes first; an attribute whose latent change is
a fraction of a few-pixel shift is learned last.

    python benchmarks/toy_latent_signal.py [--autoencoder FILE] [--scenes 32]

Default file: the embedded model's autoencoder (sf_core/toy/assets/default/decoder.safetensors).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sf_core.toy.autoencoder import load_autoencoder  # noqa: E402
from sf_core.toy.latents import AutoencoderSpace  # noqa: E402
from sf_core.toy.render import render  # noqa: E402
from sf_core.toy.world import RANGES, ObjectSpec, ObjectState, Scene, SceneSpec  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[1] / "sf_core/toy/assets/default/decoder.safetensors"
SIZE = 64
# attribute change -> (shape, colour, dx in pixels, size factor, background, motion) of the changed scene
CHANGES = {
    "reference (red circle on black)": ("circle", "red", 0, 1.0, "black", "static"),
    "shape: circle -> square": ("square", "red", 0, 1.0, "black", "static"),
    "shape: circle -> triangle": ("triangle", "red", 0, 1.0, "black", "static"),
    "colour: red -> orange": ("circle", "orange", 0, 1.0, "black", "static"),
    "colour: red -> green": ("circle", "green", 0, 1.0, "black", "static"),
    "position: 4 px right": ("circle", "red", 4, 1.0, "black", "static"),
    "size: +15 %": ("circle", "red", 0, 1.15, "black", "static"),
    "background: black -> navy": ("circle", "red", 0, 1.0, "navy", "static"),
    "motion: static -> right": ("circle", "red", 0, 1.0, "black", "right"),
    "motion: static -> left": ("circle", "red", 0, 1.0, "black", "left"),
    "motion: static -> pulse": ("circle", "red", 0, 1.0, "black", "pulse"),
}
SPEED, PULSE = 0.03, (0.04, 2 * 3.141592653589793 / 16)   # frame widths a frame; amplitude, rad a frame (phase 0)


def scenes(states: list[tuple[float, float, float]], shape: str, colour: str, dx: float, factor: float,
           background: str, motion: str) -> list[Scene]:
    spec = SceneSpec((ObjectSpec(shape, colour, motion),), (background, background))
    moves = {"speed": SPEED} if motion in ("left", "right") else {}
    moves = dict(zip(("amplitude", "omega"), PULSE)) if motion == "pulse" else moves
    return [Scene(spec, (ObjectState(x=x + dx / SIZE, y=y, size=s * factor, **moves),)) for x, y, s in states]


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--autoencoder", type=Path, default=DEFAULT)
    ap.add_argument("--scenes", type=int, default=32)
    args = ap.parse_args()
    space = AutoencoderSpace(load_autoencoder(args.autoencoder))
    rng = random.Random(0)
    states = [(rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(*RANGES["size"])) for _ in range(args.scenes)]
    frames = space.pixel_frames(3)
    pixels, latents = {}, {}
    for name, change in CHANGES.items():
        pixels[name] = render(scenes(states, *change), frames, height=SIZE, width=SIZE)   # [B, T, 3, H, W]
        latents[name] = space.encode(pixels[name])                                         # [B, F, C, h, w]
    ref = next(iter(CHANGES))
    shift = (latents["position: 4 px right"] - latents[ref]).pow(2).mean().sqrt()
    print(f"{args.autoencoder} ({args.scenes} one-object scenes, {SIZE}×{SIZE} px, 3 latent frames; moving ones at "
          f"{SPEED} frame widths a frame or pulsing by {PULSE[0]} at {PULSE[1]:.3f} rad a frame)\n")
    print("| change | pixel RMS | latent RMS | gain (latent / pixel) | latent RMS / 4-px shift's |")
    print("|---|---|---|---|---|")
    for name in list(CHANGES)[1:]:
        dp = (pixels[name] - pixels[ref]).pow(2).mean().sqrt()
        dl = (latents[name] - latents[ref]).pow(2).mean().sqrt()
        print(f"| {name} | {dp:.4f} | {dl:.4f} | {dl / dp:.2f} | {dl / shift:.2f} |")
    print(f"\nlatent RMS of the reference itself: {latents[ref].pow(2).mean().sqrt():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
