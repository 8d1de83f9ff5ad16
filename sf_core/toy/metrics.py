"""Exact metrics of generated toy videos against the known ground truth of their prompts.

Every frame is fitted by the exact renderer (:func:`sf_core.toy.fit.fit_frames`: the prompt fixes shapes,
colours, depth order and background; centre and size of each object are fitted), and every object's
per-frame states are fitted by the trajectory of each motion family (:func:`sf_core.toy.fit.fit_motions`).
Real renders score ~0 error / accuracy 1. Per-frame curves ``[B, F]`` (NaN where undefined):

- ``frame_error``      RMSE between the frame and its fitted valid frame (an upper bound on the distance to
                       the nearest valid frame of the prompt) — realism + adherence in one number;
- ``background_error`` RMSE against the exact background where the fit has no object;
- ``colour_error``     distance (RGB) of each visible object's interior mean colour to its prompt colour;
- ``sharpness``        gradient energy of the frame / of its fit (1 = exact; < 1 blurred, > 1 noisy);
- ``opacity``          mean contrast of each visible object's interior against the background along its
                       prompt colour (1 = exact, 0 = dissolved into the background);
- ``presence``         fraction of prompt objects found in the frame (a dissolved object is not found);
- ``flicker``          RMSE of the frame-to-frame change not explained by the fitted frames (NaN at t = 0);
- ``brightness``       mean of frame − fitted frame over pixels and channels, signed (> 0 brighter than a
                       valid frame); its growth over a clip is the brightness drift;
- ``motion_error``     pixels between each visible object's fitted state and the closest trajectory of its
                       prompted motion within the domain's parameter ranges (a frozen mover drifts away);
- ``shape_accuracy`` / ``colour_accuracy``  fraction of visible objects whose shape / nearest palette colour
                       is the prompted one (an object swapped for another shape fits worse than the original).

Per clip: the NaN-mean of each curve; ``motion_accuracy`` (fraction of objects whose best-fitting motion
family is the prompted one); ``adherence`` (mean of the three accuracies); and error accumulation
``<curve>_early / _late / _growth / _slope`` for frame, colour and motion error, flicker and brightness
(:func:`accumulation`).
Aggregate over clips with :func:`summarize` (t or bootstrap confidence intervals).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .fit import fit_frames, fit_motions, trajectory_distance
from .render import SceneBatch, background_image, composite, coverage, from_latent
from .stats import Estimate, mean_ci
from .world import OBJECT_COLOURS, SIZE_LIMITS, SHAPES, Scene, SceneSpec, parse_prompt, scene_for

ACCUMULATION_CURVES = ("frame_error", "colour_error", "motion_error", "flicker", "brightness")


@dataclass
class ToyMetrics:
    curves: dict[str, torch.Tensor]   # name -> [B, F]
    clip: dict[str, torch.Tensor]     # name -> [B]

    @staticmethod
    def concat(parts: list["ToyMetrics"]) -> "ToyMetrics":
        """Join evaluations of batches with the same number of frames."""
        return ToyMetrics({k: torch.cat([p.curves[k] for p in parts]) for k in parts[0].curves},
                          {k: torch.cat([p.clip[k] for p in parts]) for k in parts[0].clip})


def accumulation(curve: torch.Tensor, window: int | None = None) -> dict[str, torch.Tensor]:
    """Error accumulation of a per-frame curve [B, F]: NaN-means over the first and last ``window`` frames
    (default F // 4, at least 1), their difference, and the least-squares slope per frame -> each [B]."""
    f = curve.shape[1]
    window = max(1, f // 4) if window is None else min(window, f)
    early, late = curve[:, :window].nanmean(1), curve[:, f - window:].nanmean(1)
    t = torch.arange(f, dtype=curve.dtype, device=curve.device).expand_as(curve)
    valid = ~torch.isnan(curve)
    n = valid.sum(1).clamp(min=1)
    tm = torch.where(valid, t, 0).sum(1) / n
    ym = torch.where(valid, curve, 0).sum(1) / n
    tc = torch.where(valid, t - tm[:, None], 0)
    slope = (tc * torch.where(valid, curve - ym[:, None], 0)).sum(1) / (tc * tc).sum(1).clamp(min=1e-12)
    return {"early": early, "late": late, "growth": late - early, "slope": slope}


def _as_batch(prompts: list[str | SceneSpec | Scene]) -> SceneBatch:
    scenes = []
    for p in prompts:
        spec = p.spec if isinstance(p, Scene) else (parse_prompt(p) if isinstance(p, str) else p)
        scenes.append(scene_for(spec, 0))
    return SceneBatch(scenes)


def _object_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the objects selected by ``mask``: [B, K, F] -> [B, F] (NaN where none is selected)."""
    count = mask.sum(1)
    mean = torch.where(mask, values, 0).sum(1) / count.clamp(min=1)
    return torch.where(count > 0, mean, float("nan"))


def _gradient_energy(img: torch.Tensor) -> torch.Tensor:
    """[B, F, 3, H, W] -> [B, F]."""
    return (img.diff(dim=-1) ** 2).sum((2, 3, 4)) + (img.diff(dim=-2) ** 2).sum((2, 3, 4))


def evaluate(frames: torch.Tensor, prompts: list, steps: int = 10, window: int | None = None) -> ToyMetrics:
    """Metrics of pixel videos ``frames`` [B, F, 3, H, W] (clamped to [0, 1]) generated for ``prompts``
    (strings, :class:`SceneSpec` or :class:`Scene`; only their discrete content is used)."""
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"evaluate: expected pixel frames [B, F, 3, H, W], got {tuple(frames.shape)}")
    if len(prompts) != frames.shape[0]:
        raise ValueError(f"evaluate: {len(prompts)} prompts for a batch of {frames.shape[0]} videos")
    frames = frames.detach().float().clamp(0, 1)
    b, f, _, h, w = frames.shape
    batch = _as_batch(prompts).to(frames.device)
    fit = fit_frames(frames, batch, steps=steps)
    bg = background_image(batch.background, h, w)                             # [B, 3, H, W]
    curves = {"frame_error": ((frames - fit.frames) ** 2).mean((2, 3, 4)).sqrt(),
              "brightness": (frames - fit.frames).mean((2, 3, 4))}
    empty = (fit.cover.sum(1) == 0).unsqueeze(2)                                # [B, F, 1, H, W]
    sq = ((frames - bg.unsqueeze(1)) ** 2 * empty).sum((2, 3, 4))
    curves["background_error"] = (sq / (3 * empty.sum((2, 3, 4))).clamp(min=1)).sqrt()
    v = _visibility(fit, batch, f, min(h, w))
    curves.update(_colour_curves(frames, batch, bg, v))
    curves["shape_accuracy"] = _object_mean((v.seen & _prompted_shape_wins(frames, batch, fit, bg)).float(),
                                            v.judged)
    curves["presence"] = _object_mean(v.found.float(), v.present)
    curves["sharpness"] = _gradient_energy(frames) / _gradient_energy(fit.frames).clamp(min=1e-6)
    change = (frames.diff(dim=1) - fit.frames.diff(dim=1)) ** 2
    curves["flicker"] = torch.cat([torch.full((b, 1), float("nan"), device=frames.device),
                                   change.mean((2, 3, 4)).sqrt()], 1)
    curves["motion_error"], motion_accuracy = _motion(fit, batch, v, h, w)
    return ToyMetrics(curves, _per_clip(curves, motion_accuracy, window))


@dataclass
class _Visibility:
    present: torch.Tensor   # [B, K, F] the prompt has object k
    found: torch.Tensor     # [B, K, F] the fit found enough of it
    seen: torch.Tensor      # [B, K, F] found and at least one pixel visible
    judged: torch.Tensor    # [B, K, F] counted (hidden objects are not judged)
    visible: torch.Tensor   # [B, K, F, H, W] visible coverage (objects later in the prompt are in front)


def _visibility(fit, batch: SceneBatch, f: int, unit: int) -> _Visibility:
    k = batch.shape.shape[1]
    present = (batch.shape >= 0)[..., None].expand(-1, -1, f)
    front = torch.ones_like(fit.cover[:, :1])
    visible = torch.empty_like(fit.cover)
    for j in reversed(range(k)):
        visible[:, j] = fit.cover[:, j] * front[:, 0]
        front = front * (1 - fit.cover[:, j:j + 1])
    area = visible.sum((-1, -2))                                                # [B, K, F] pixels
    found = present & (fit.mass >= 0.5 * math.pi * (SIZE_LIMITS[0] * unit) ** 2)  # half the smallest object
    seen = found & (area >= 1)
    return _Visibility(present, found, seen, present & (seen | ~found), visible)


def _colour_curves(frames: torch.Tensor, batch: SceneBatch, bg: torch.Tensor, v: _Visibility) -> dict:
    """colour_error, opacity and colour_accuracy of each object's fully visible interior."""
    interior = (v.visible >= 0.9).unsqueeze(3)                                  # [B, K, F, 1, H, W]
    n_in = interior.sum((-1, -2, -3))                                           # [B, K, F]
    mean_colour = (frames.unsqueeze(1) * interior).sum((-1, -2)) / n_in.clamp(min=1)[..., None]  # [B, K, F, 3]
    bg_mean = bg.mean((-1, -2))[:, None, None, :]
    observed = torch.where((n_in > 0)[..., None], mean_colour, bg_mean)        # a lost object shows background
    d = batch.colour[..., None, None] - bg.unsqueeze(1)                        # [B, K, 3, H, W]
    along = ((frames - bg.unsqueeze(1)).unsqueeze(1) * d.unsqueeze(2)).sum(3)  # [B, K, F, H, W]
    alpha = along / (d * d).sum(2, keepdim=True).clamp(min=1e-6)
    inside = interior.squeeze(3)                                                # [B, K, F, H, W]
    opacity = (alpha.clamp(0, 1) * inside).sum((-1, -2)) / inside.sum((-1, -2)).clamp(min=1)
    palette = torch.tensor(list(OBJECT_COLOURS.values()), device=frames.device)  # [P, 3]
    nearest = (observed[..., None, :] - palette).norm(dim=-1).argmin(-1)       # [B, K, F]
    prompt_colour = (batch.colour[:, :, None] - palette).norm(dim=-1).argmin(-1)  # [B, K]
    colour_ok = v.seen & (n_in > 0) & (nearest == prompt_colour[..., None])
    return {"colour_error": _object_mean((observed - batch.colour[:, :, None]).norm(dim=-1), v.judged),
            "opacity": _object_mean(opacity, v.judged & (n_in > 0)),
            "colour_accuracy": _object_mean(colour_ok.float(), v.judged)}


def _prompted_shape_wins(frames: torch.Tensor, batch: SceneBatch, fit, bg: torch.Tensor) -> torch.Tensor:
    """[B, K, F]: the prompted shape explains the frame strictly better than either other shape."""
    f, (h, w) = frames.shape[1], frames.shape[-2:]
    errs = []
    for kind in range(len(SHAPES)):
        alt = []
        for j in range(batch.shape.shape[1]):
            shape = batch.shape.clone()
            shape[:, j] = torch.where(shape[:, j] >= 0, kind, -1)
            img = composite(coverage(fit.cx, fit.cy, fit.size, shape, h, w), batch.colour, bg)
            alt.append(((img - frames) ** 2).sum((2, 3, 4)))                   # [B, F]
        errs.append(torch.stack(alt, 1))                                        # [B, K, F]
    errs = torch.stack(errs)                                                    # [S, B, K, F]
    own = errs.gather(0, batch.shape.clamp(min=0)[None, ..., None].expand(1, -1, -1, f)).squeeze(0)
    kinds = torch.arange(len(SHAPES), device=frames.device).view(-1, 1, 1, 1)
    others = torch.where(kinds == batch.shape[None, ..., None], float("inf"), errs).amin(0)
    return own < others


def _motion(fit, batch: SceneBatch, v: _Visibility, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(motion_error curve [B, F], motion_accuracy per clip [B]) against the fitted trajectory families."""
    f = v.seen.shape[-1]
    families = fit_motions(fit.cx, fit.cy, fit.size, v.seen)                  # [M, 3, B, K, F]
    dist = trajectory_distance(families, fit.cx, fit.cy, fit.size, h, w)      # [M, B, K, F]
    own_motion = dist.gather(0, batch.motion[None, ..., None].expand(1, -1, -1, f)).squeeze(0)
    per_family = torch.where(v.seen, dist, 0).sum(-1) / v.seen.sum(-1).clamp(min=1)  # [M, B, K]
    motion_ok = (per_family.argmin(0) == batch.motion) & v.seen.any(-1)
    present = v.present[..., 0]
    accuracy = torch.where(present, motion_ok.float(), 0).sum(1) / present.sum(1)
    return _object_mean(own_motion, v.seen), accuracy


def _per_clip(curves: dict, motion_accuracy: torch.Tensor, window: int | None) -> dict[str, torch.Tensor]:
    clip = {name: c.nanmean(1) for name, c in curves.items()}
    clip["motion_accuracy"] = motion_accuracy
    clip["adherence"] = (clip["shape_accuracy"] + clip["colour_accuracy"] + motion_accuracy) / 3
    for name in ACCUMULATION_CURVES:
        curve = curves[name][:, 1:] if name == "flicker" else curves[name]   # flicker starts at t = 1
        for key, value in accumulation(curve, window).items():
            clip[f"{name}_{key}"] = value
    return clip


def evaluate_latents(latents: torch.Tensor, prompts: list, **kwargs) -> ToyMetrics:
    """:func:`evaluate` for toy latents [B, F, 12, h, w] (decoded exactly by :func:`from_latent`)."""
    return evaluate(from_latent(latents.detach().float()), prompts, **kwargs)


def summarize(metrics: ToyMetrics, level: float = 0.95, method: str = "t", seed: int = 0) -> dict[str, Estimate]:
    """Mean and confidence interval over clips of every per-clip metric."""
    return {name: mean_ci(v, level, method, seed=seed) for name, v in metrics.clip.items()}

