"""A contact sheet of a video for the docs: one frame every `--every` seconds, in rows, scaled up without blur.

    python scripts/contact_sheet.py outputs/demo.mp4 docs/images/demo_frames.png --every 1 --columns 6 --scale 3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sf_core.media.recording import read_video  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between shown frames")
    ap.add_argument("--columns", type=int, default=6)
    ap.add_argument("--scale", type=int, default=3, help="integer upscaling (nearest neighbour)")
    ap.add_argument("--gap", type=int, default=2, help="pixels between frames")
    args = ap.parse_args()
    frames, fps = read_video(args.video)
    if len(frames) == 0:
        ap.error(f"{args.video}: no frames")
    picks = frames[:: max(1, round(args.every * fps))]
    rows = -(-len(picks) // args.columns)
    h, w = frames.shape[1] * args.scale, frames.shape[2] * args.scale
    sheet = np.full((rows * (h + args.gap) - args.gap, args.columns * (w + args.gap) - args.gap, 3), 255, np.uint8)
    for i, frame in enumerate(picks):
        r, c = divmod(i, args.columns)
        big = frame.repeat(args.scale, 0).repeat(args.scale, 1)
        sheet[r * (h + args.gap):r * (h + args.gap) + h, c * (w + args.gap):c * (w + args.gap) + w] = big
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out)
    print(f"{args.out}: {len(picks)} frames of {args.video} ({len(frames)} at {fps:g} fps), every {args.every:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
