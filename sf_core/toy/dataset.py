"""(prompt, latent clip) pairs for training, rendered on the fly from the seeded scene stream."""
from __future__ import annotations

import torch

from .latents import PIXELS
from .render import object_coverage, render
from .world import sample_scenes


def sample_batch(batch: int, num_frames: int, seed: int, start: int = 0, height: int = 32, width: int = 32,
                 device: torch.device | str = "cpu", space=PIXELS, with_objects: bool = False) -> tuple:
    """Scenes ``start .. start + batch - 1`` of ``seed`` -> (prompts, latents [B, F, C, h, w]) of ``num_frames``
    latent frames in ``space`` (:mod:`sf_core.toy.latents`; default the exact pixels, 12 × H/2 × W/2);
    ``with_objects`` adds the latent positions any object touches, [B, F, h, w] bool (exact coverage)."""
    scenes = sample_scenes(batch, seed, start)
    frames = space.pixel_frames(num_frames)
    pixels = render(scenes, frames, height=height, width=width, device=device)
    out = ([s.prompt for s in scenes], space.encode(pixels))
    if with_objects:
        out += (space.footprint(object_coverage(scenes, frames, height=height, width=width, device=device) > 0),)
    return out


class ToyVideoDataset(torch.utils.data.Dataset):
    """Item i = (prompt, latent clip [F, 12, H/2, W/2]) of scene i of ``seed``; ``size`` items."""

    def __init__(self, num_frames: int, size: int = 100_000, seed: int = 0, height: int = 32, width: int = 32):
        self.num_frames, self.size, self.seed, self.height, self.width = num_frames, size, seed, height, width

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"ToyVideoDataset: index {index} out of range [0, {self.size})")
        prompts, latents = sample_batch(1, self.num_frames, self.seed, index, self.height, self.width)
        return prompts[0], latents[0]
