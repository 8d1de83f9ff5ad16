"""Exact, vectorised, anti-aliased rendering of toy scenes, and the toy latent space.

Rendering: each shape is a signed distance d (in pixels) to its outline on a torus; pixel coverage is
``clamp(0.5 - d, 0, 1)`` (a one-pixel anti-aliasing ramp). Objects are composited in prompt order
(later objects in front) over the background. All shapes of a given size have the same area
``pi * size^2``. This same function renders the ground truth and the fits in :mod:`sf_core.toy.metrics`.

The exact pixel latent space: a fixed, exactly invertible linear map of pixels,
``latent = pixel_unshuffle(2 * rgb - 1, 2)`` (space-to-depth 2x2 -> ``C = 12`` channels at half
resolution), one latent frame per frame. It needs no training and adds no reconstruction error, so the
Table-2 reproduction profiles use it and every metric measures the video model alone. The embedded
default model uses the learned autoencoder instead (:mod:`sf_core.toy.autoencoder`: stride 8 × 4, the
Wan VAE's geometry); :mod:`sf_core.toy.latents` puts both behind one interface.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .world import BACKGROUND_COLOURS, MAX_OBJECTS, MOTIONS, OBJECT_COLOURS, SHAPES, Scene

LATENT_FACTOR = 2
LATENT_CHANNELS = 3 * LATENT_FACTOR ** 2

SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2                  # half side, in sizes (area pi * size^2)
TRIANGLE_INRADIUS = math.sqrt(math.pi / (3 * math.sqrt(3)))  # inradius of the equilateral triangle, in sizes

# What render_with_codes says of every pixel: its shape, its motion, and which of the prompt's objects it shows
CODES = (*SHAPES, "velocity x", "velocity y", "growth", *(f"object {k + 1}" for k in range(MAX_OBJECTS)))
MOTION_SCALE = (0.05, 0.05, 0.025)   # velocity of x, y, size that codes ±1: translations are 0.02–0.045 a frame
                                     # (0.4–0.9), orbits 0.02–0.08 (clamped), pulses' growth up to 0.026


def to_latent(pixels: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in [0, 1] -> [..., 12, H/2, W/2] in [-1, 1]."""
    lead, (c, h, w) = pixels.shape[:-3], pixels.shape[-3:]
    if c != 3 or h % LATENT_FACTOR or w % LATENT_FACTOR:
        raise ValueError(f"to_latent: expected [..., 3, H, W] with even H, W, got {tuple(pixels.shape)}")
    x = F.pixel_unshuffle(pixels.reshape(-1, c, h, w) * 2 - 1, LATENT_FACTOR)
    return x.reshape(*lead, *x.shape[1:])


def from_latent(latent: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`to_latent`: [..., 12, h, w] -> [..., 3, 2h, 2w] (not clamped)."""
    lead, (c, h, w) = latent.shape[:-3], latent.shape[-3:]
    if c != LATENT_CHANNELS:
        raise ValueError(f"from_latent: expected {LATENT_CHANNELS} channels, got {tuple(latent.shape)}")
    x = F.pixel_shuffle(latent.reshape(-1, c, h, w), LATENT_FACTOR)
    return ((x + 1) / 2).reshape(*lead, *x.shape[1:])


class SceneBatch:
    """Scenes packed into tensors, objects padded to K = max objects in the batch.

    shape [B, K] (index into SHAPES, -1 = no object), motion [B, K] (index into MOTIONS),
    colour [B, K, 3], background [B, 2, 3] (top, bottom), params [B, K, 8] float64
    (x, y, size, speed, omega, phase, radius, amplitude).
    """

    def __init__(self, scenes: list[Scene]):
        k = max(len(s.spec.objects) for s in scenes)
        b = len(scenes)
        self.shape = torch.full((b, k), -1, dtype=torch.long)
        self.motion = torch.zeros((b, k), dtype=torch.long)
        self.colour = torch.zeros((b, k, 3))
        self.background = torch.zeros((b, 2, 3))
        self.params = torch.zeros((b, k, 8), dtype=torch.float64)
        for i, s in enumerate(scenes):
            self.background[i] = torch.tensor([BACKGROUND_COLOURS[n] for n in s.spec.background])
            for j, (o, st) in enumerate(zip(s.spec.objects, s.states)):
                self.shape[i, j] = SHAPES.index(o.shape)
                self.motion[i, j] = MOTIONS.index(o.motion)
                self.colour[i, j] = torch.tensor(OBJECT_COLOURS[o.colour])
                self.params[i, j] = torch.tensor([st.x, st.y, st.size, st.speed, st.omega, st.phase,
                                                  st.radius, st.amplitude], dtype=torch.float64)

    def to(self, device: torch.device | str) -> "SceneBatch":
        """The same batch with every tensor on ``device``."""
        out = object.__new__(SceneBatch)
        for name in ("shape", "motion", "colour", "background", "params"):
            setattr(out, name, getattr(self, name).to(device))
        return out


def trajectories(batch: SceneBatch, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Object centre and size at frame times ``t`` [F] -> x, y, size, each [B, K, F] float32.

    Evaluated in float64 and reduced modulo 1 so that frame 10^6 is as exact as frame 0.
    """
    p = batch.params.unsqueeze(-1)                               # [B, K, 8, 1]
    x, y, size, speed, omega, phase, radius, amp = p.unbind(-2)  # each [B, K, 1]
    t = t.to(dtype=torch.float64, device=p.device).view(1, 1, -1)
    m = batch.motion.unsqueeze(-1)
    shift = speed * t
    angle = torch.remainder(phase + omega * t, 2 * math.pi)
    cx = torch.where(m == MOTIONS.index("left"), x - shift, torch.where(m == MOTIONS.index("right"), x + shift, x))
    cy = torch.where(m == MOTIONS.index("up"), y - shift, torch.where(m == MOTIONS.index("down"), y + shift, y))
    orbit = m == MOTIONS.index("orbit")
    cx = torch.where(orbit, 0.5 + radius * torch.cos(angle), cx)
    cy = torch.where(orbit, 0.5 + radius * torch.sin(angle), cy)
    r = torch.where(m == MOTIONS.index("pulse"), size + amp * torch.sin(angle), size.expand_as(cx))
    return (torch.remainder(cx, 1.0).float(), torch.remainder(cy, 1.0).float(), r.float())


def _signed_distance(shape: int, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance in pixels to one shape kind; dx [N, F, 1, W], dy [N, F, H, 1], r [N, F, 1, 1]."""
    if shape == 0:
        return torch.sqrt(dx * dx + dy * dy + 1e-12) - r
    if shape == 1:
        return torch.maximum(dx.abs(), dy.abs()) - r * SQUARE_HALF_SIDE
    s3 = math.sqrt(3) / 2
    return torch.maximum(torch.maximum(dy, -s3 * dx - 0.5 * dy), s3 * dx - 0.5 * dy) - r * TRIANGLE_INRADIUS


def coverage(cx: torch.Tensor, cy: torch.Tensor, size: torch.Tensor, shape: torch.Tensor,
             height: int, width: int) -> torch.Tensor:
    """Anti-aliased coverage of objects on a torus: cx, cy, size [B, K, F], shape [B, K] -> [B, K, F, H, W]."""
    b, k, f = cx.shape
    unit = min(height, width)
    px = (torch.arange(width, dtype=cx.dtype, device=cx.device) + 0.5).view(1, 1, 1, width)
    py = (torch.arange(height, dtype=cx.dtype, device=cx.device) + 0.5).view(1, 1, height, 1)
    flat = shape.reshape(-1)
    out = cx.new_zeros(b * k, f, height, width)
    for kind in range(len(SHAPES)):
        idx = (flat == kind).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        sel = lambda v: v.reshape(b * k, f)[idx][..., None, None]                          # [N, F, 1, 1]
        dx = torch.remainder(px - sel(cx) * width + width / 2, width) - width / 2         # [N, F, 1, W]
        dy = torch.remainder(py - sel(cy) * height + height / 2, height) - height / 2     # [N, F, H, 1]
        dist = _signed_distance(kind, dx, dy, sel(size).clamp(min=0) * unit)
        out = out.index_put((idx,), (0.5 - dist).clamp(0, 1))
    return out.view(b, k, f, height, width)


def background_image(background: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, 2, 3] (top, bottom) -> vertical gradient [B, 3, H, W] sampled at pixel centres."""
    w = ((torch.arange(height, dtype=background.dtype, device=background.device) + 0.5) / height).view(1, 1, height, 1)
    top, bottom = background[:, 0, :, None, None], background[:, 1, :, None, None]
    return (top + (bottom - top) * w).expand(-1, -1, height, width)


def composite(cover: torch.Tensor, colour: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Objects over background: cover [B, K, F, H, W], colour [B, K, 3], background [B, 3, H, W] -> [B, F, 3, H, W]."""
    img = background.unsqueeze(1).expand(-1, cover.shape[2], -1, -1, -1)
    for k in range(cover.shape[1]):
        a = cover[:, k].unsqueeze(2)                               # [B, F, 1, H, W]
        img = img * (1 - a) + colour[:, k, None, :, None, None] * a
    return img


def _frame_times(num_frames: int, start_frame: int) -> torch.Tensor:
    """Frame times ``start_frame .. start_frame + num_frames - 1`` -> [F] float64."""
    return torch.arange(start_frame, start_frame + num_frames, dtype=torch.float64)


def _frame_coverage(batch: SceneBatch, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Coverage of every object at frame times ``t`` [F] -> [B, K, F, H, W]."""
    return coverage(*trajectories(batch, t), batch.shape, height, width)


def render_batch(batch: SceneBatch, num_frames: int, start_frame: int = 0, height: int = 32,
                 width: int = 32) -> torch.Tensor:
    """Frames ``start_frame .. start_frame + num_frames - 1`` of every scene -> [B, F, 3, H, W] in [0, 1]."""
    cover = _frame_coverage(batch, _frame_times(num_frames, start_frame), height, width)
    return composite(cover, batch.colour, background_image(batch.background, height, width))


def object_coverage(scenes: list[Scene], num_frames: int, start_frame: int = 0, height: int = 32, width: int = 32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Where any object is: the largest coverage over the objects of every pixel -> [B, F, H, W] in [0, 1]."""
    return _frame_coverage(SceneBatch(scenes).to(device), _frame_times(num_frames, start_frame), height, width).amax(1)


def visible_coverage(cover: torch.Tensor) -> torch.Tensor:
    """How much of every pixel shows each object once objects are composited in order (later in front):
    cover [B, K, F, H, W] -> [B, K, F, H, W], summing to <= 1 over K."""
    visible, hidden = torch.zeros_like(cover), torch.zeros_like(cover[:, 0])
    for k in reversed(range(cover.shape[1])):
        visible[:, k] = cover[:, k] * (1 - hidden)
        hidden = hidden + visible[:, k]
    return visible


def visible_shape_coverage(visible: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """How much of every pixel shows each shape kind: visible [B, K, F, H, W] (:func:`visible_coverage`),
    shape [B, K] -> [B, F, len(SHAPES), H, W] in [0, 1], summing to <= 1 per pixel."""
    kinds = F.one_hot(shape.clamp(min=0), len(SHAPES)).to(visible.dtype) * (shape >= 0).unsqueeze(-1)  # [B, K, S]
    return torch.einsum("bkfhw,bks->bfshw", visible, kinds)


def velocities(batch: SceneBatch, t: torch.Tensor) -> torch.Tensor:
    """d/dt of :func:`trajectories` at frame times ``t`` [F]: (x, y, size) in frame widths (heights) per frame
    -> [B, K, F, 3] float32 (exact derivatives: constant for left/right/up/down, tangential for orbit,
    amplitude × omega × cos(angle) of the size for pulse, zero for static)."""
    p = batch.params.unsqueeze(-1)
    _, _, _, speed, omega, phase, radius, amp = p.unbind(-2)    # each [B, K, 1]
    t = t.to(dtype=torch.float64, device=p.device).view(1, 1, -1)
    m = batch.motion.unsqueeze(-1)
    angle = phase + omega * t
    is_ = lambda name: (m == MOTIONS.index(name)).double()                 # [B, K, 1]
    orbit = m == MOTIONS.index("orbit")
    vx = torch.where(orbit, -radius * omega * torch.sin(angle), speed * (is_("right") - is_("left")))
    vy = torch.where(orbit, radius * omega * torch.cos(angle), speed * (is_("down") - is_("up")))
    vr = is_("pulse") * amp * omega * torch.cos(angle)
    return torch.stack([vx, vy, vr], -1).float()


def visible_motion(visible: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """How every pixel moves where objects show: visible [B, K, F, H, W] (:func:`visible_coverage`), velocity
    [B, K, F, 3] (:func:`velocities`) -> [B, F, 3, H, W] in [-1, 1]: visible coverage × velocity /
    :data:`MOTION_SCALE` (clamped to ±1) of x, y and size, summed over the objects."""
    v = (velocity / torch.tensor(MOTION_SCALE, device=velocity.device)).clamp(-1, 1)
    return torch.einsum("bkfhw,bkfc->bfchw", visible, v)


def render_with_codes(scenes: list[Scene], num_frames: int, start_frame: int = 0, height: int = 32,
                      width: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`render` of a list, and what every pixel shows (:data:`CODES`): its
    :func:`visible_shape_coverage`, its :func:`visible_motion` and the visible coverage of the prompt's
    objects 1..3 in prompt order (0 for absent ones), from one coverage pass
    -> [B, F, 3, H, W] and [B, F, 9, H, W]."""
    batch, t = SceneBatch(scenes), _frame_times(num_frames, start_frame)
    cover = _frame_coverage(batch, t, height, width)
    video = composite(cover, batch.colour, background_image(batch.background, height, width))
    visible = visible_coverage(cover)                                            # [B, K, F, H, W]
    objects = F.pad(visible, (0, 0, 0, 0, 0, 0, 0, MAX_OBJECTS - visible.shape[1])).transpose(1, 2)
    codes = torch.cat([visible_shape_coverage(visible, batch.shape), visible_motion(visible, velocities(batch, t)),
                       objects], 2)
    return video, codes


def render(scene: Scene | list[Scene], num_frames: int, start_frame: int = 0, height: int = 32,
           width: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Ground-truth pixels: one scene -> [F, 3, H, W]; a list -> [B, F, 3, H, W]. Any length, any start."""
    scenes = [scene] if isinstance(scene, Scene) else scene
    video = render_batch(SceneBatch(scenes).to(device), num_frames, start_frame, height, width)
    return video[0] if isinstance(scene, Scene) else video
