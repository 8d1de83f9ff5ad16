"""Fitting the toy world's parametric model to (possibly generated) frames.

Two levels, both fully vectorised:

1. :func:`fit_frames` — for every frame and every object the prompt names (shape, colour and background are
   known from the prompt), find the centre and size (within SIZE_LIMITS) whose exact rendering is closest
   (squared error) to the frame: moment initialisation from a per-pixel colour decomposition, then
   Levenberg-Marquardt with the analytic Jacobian of the rendering (through the anti-aliasing ramp, objects
   composited in depth order, so occlusion is handled). The fitted frame is a valid frame of the prompt, so
   its distance to the input is an upper bound on the distance to the nearest valid frame, and ~0 (RMSE
   ~1e-5) for real frames.
2. :func:`fit_motions` — the per-frame states are fitted by the trajectory of every motion family, with the
   nuisance parameters constrained to :data:`sf_core.toy.world.RANGES` (closed-form least squares, then
   clamped; the pulse frequency by a three-level grid search). A frozen object therefore does not fit
   "moves left" (the speed may not go below its minimum) and its error grows with time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .render import SQUARE_HALF_SIDE, TRIANGLE_INRADIUS, SceneBatch, background_image, composite, coverage
from .world import MOTIONS, RANGES, SHAPES, SIZE_LIMITS


@dataclass
class FrameFit:
    cx: torch.Tensor        # [B, K, F] normalised centre x
    cy: torch.Tensor        # [B, K, F]
    size: torch.Tensor      # [B, K, F] within SIZE_LIMITS: a valid frame always shows every object
    mass: torch.Tensor      # [B, K, F] pixels explained by the object's colour (~0: the object is missing)
    cover: torch.Tensor     # [B, K, F, H, W] coverage of the fitted objects
    frames: torch.Tensor    # [B, F, 3, H, W] the fitted (valid) frames


def _circular_mean(a: torch.Tensor, weight: torch.Tensor, dim) -> torch.Tensor:
    """Weighted mean of coordinates on the unit circle [0, 1)."""
    ang = 2 * math.pi * a
    s, c = (weight * torch.sin(ang)).sum(dim), (weight * torch.cos(ang)).sum(dim)
    return torch.remainder(torch.atan2(s, c) / (2 * math.pi), 1.0)


def _initial_states(frames: torch.Tensor, batch: SceneBatch, bg: torch.Tensor):
    """Moment estimates from a per-pixel decomposition frame ≈ bg + alpha_k (colour_k - bg) -> cx, cy, size, mass."""
    b, f, _, h, w = frames.shape
    diff = (frames - bg.unsqueeze(1)).unsqueeze(1)                         # [B, 1, F, 3, H, W]
    d = (batch.colour[..., None, None] - bg.unsqueeze(1)).unsqueeze(2)     # [B, K, 1, 3, H, W]
    alpha = ((diff * d).sum(3) / (d * d).sum(3).clamp(min=1e-6)).clamp(0, 1)  # [B, K, F, H, W]
    resid = ((diff - alpha.unsqueeze(3) * d) ** 2).sum(3)
    candidate = (alpha > 0.5) & (batch.shape >= 0)[..., None, None, None]
    resid = torch.where(candidate, resid, torch.full_like(resid, float("inf")))
    winner = torch.nn.functional.one_hot(resid.argmin(1), batch.shape.shape[1]).movedim(-1, 1).bool()
    weight = alpha * (winner & candidate)                                  # [B, K, F, H, W]
    mass = weight.sum((-1, -2))                                            # [B, K, F] pixels
    xs = ((torch.arange(w, device=frames.device) + 0.5) / w).view(1, 1, 1, 1, w).expand_as(weight)
    ys = ((torch.arange(h, device=frames.device) + 0.5) / h).view(1, 1, 1, h, 1).expand_as(weight)
    cx, cy = _circular_mean(xs, weight, (-1, -2)), _circular_mean(ys, weight, (-1, -2))
    # An object with (almost) no pixels may be hidden: start it behind the largest object in front of it.
    k = mass.shape[1]
    for j in range(k):
        front = mass[:, j + 1:]
        hide = torch.full_like(mass[:, j], 0.5), torch.full_like(mass[:, j], 0.5)
        if j + 1 < k:
            big = front.argmax(1, keepdim=True)                                # [B, 1, F]
            has = front.gather(1, big).squeeze(1) > 0.5
            hide = (torch.where(has, cx[:, j + 1:].gather(1, big).squeeze(1), 0.5),
                    torch.where(has, cy[:, j + 1:].gather(1, big).squeeze(1), 0.5))
        lost = mass[:, j] <= 0.5
        cx[:, j], cy[:, j] = torch.where(lost, hide[0], cx[:, j]), torch.where(lost, hide[1], cy[:, j])
    size = (torch.sqrt(mass / math.pi) / min(h, w)).clamp(*SIZE_LIMITS)
    return cx, cy, size, mass


def _layers(cx, cy, size, shape, h, w):
    """Coverage and its derivatives for one frame per item: states [N, K] -> a [N, K, H, W], da [N, K, 3, H, W].

    Same distances as :func:`sf_core.toy.render.coverage`; the derivatives of clamp(0.5 - d) are analytic
    (d = signed distance, piecewise smooth).
    """
    n, k = cx.shape
    unit = min(h, w)
    px = (torch.arange(w, dtype=cx.dtype, device=cx.device) + 0.5).view(1, 1, w)
    py = (torch.arange(h, dtype=cx.dtype, device=cx.device) + 0.5).view(1, h, 1)
    a = cx.new_zeros(n * k, h, w)
    da = cx.new_zeros(n * k, 3, h, w)
    flat = shape.reshape(-1)
    for kind in range(len(SHAPES)):
        idx = (flat == kind).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        sel = lambda v: v.reshape(-1)[idx].view(-1, 1, 1)                                  # [M, 1, 1]
        dx = (torch.remainder(px - sel(cx) * w + w / 2, w) - w / 2).expand(-1, h, -1)    # [M, H, W]
        dy = (torch.remainder(py - sel(cy) * h + h / 2, h) - h / 2).expand(-1, -1, w)
        radius = sel(size).clamp(min=0) * unit
        if kind == 0:
            rho = torch.sqrt(dx * dx + dy * dy + 1e-12)
            dist, gx, gy, kr = rho - radius, dx / rho, dy / rho, 1.0
        elif kind == 1:
            horizontal = dx.abs() >= dy.abs()
            dist = torch.maximum(dx.abs(), dy.abs()) - radius * SQUARE_HALF_SIDE
            gx, gy, kr = torch.sign(dx) * horizontal, torch.sign(dy) * ~horizontal, SQUARE_HALF_SIDE
        else:
            s3 = math.sqrt(3) / 2
            planes = torch.stack([dy, -s3 * dx - 0.5 * dy, s3 * dx - 0.5 * dy])           # [3, M, H, W]
            best, arg = planes.max(0)
            nx = torch.tensor([0.0, -s3, s3], dtype=cx.dtype, device=cx.device)[arg]
            ny = torch.tensor([1.0, -0.5, -0.5], dtype=cx.dtype, device=cx.device)[arg]
            dist, gx, gy, kr = best - radius * TRIANGLE_INRADIUS, nx, ny, TRIANGLE_INRADIUS
        a[idx] = (0.5 - dist).clamp(0, 1)
        ramp = ((dist > -0.6) & (dist < 0.6)).to(cx.dtype)  # slightly wider: GN steps land on the kinks
        da[idx] = torch.stack([ramp * w * gx, ramp * h * gy, ramp * unit * kr * torch.ones_like(gx)], 1)
    return a.view(n, k, h, w), da.view(n, k, 3, h, w)


def _composite_with_jacobian(cx, cy, size, shape, colour, bg):
    """Frame [N, 3, H, W] and its Jacobian [N, 3K, 3 * H * W] w.r.t. (x, y, size) of each object."""
    h, w = bg.shape[-2:]
    a, da = _layers(cx, cy, size, shape, h, w)
    k = a.shape[1]
    under, layers = bg, []
    for j in range(k):
        layers.append(under)                                                      # image below object j
        under = under * (1 - a[:, j, None]) + colour[:, j, :, None, None] * a[:, j, None]
    behind = torch.ones_like(a[:, :1])                                            # transmittance of objects in front
    jac = []
    for j in reversed(range(k)):
        tint = behind * (colour[:, j, :, None, None] - layers[j])                # [N, 3, H, W]
        jac.append(da[:, j, :, None] * tint[:, None])                            # [N, 3(param), 3, H, W]
        behind = behind * (1 - a[:, j:j + 1])
    jac = torch.cat(jac[::-1], dim=1)                                             # [N, 3K, 3, H, W]
    return under, jac.flatten(2)


def _refine(cx, cy, size, shape, colour, bg, target, steps):
    """Levenberg-Marquardt on the rendering error, one frame per item: states [N, K], target [N, 3, H, W]."""
    n, k = cx.shape
    theta = torch.stack([cx, cy, size], -1).reshape(n, 3 * k)                     # [N, 3K]
    unpack = lambda th: th.view(n, k, 3).unbind(-1)
    img, jac = _composite_with_jacobian(*unpack(theta), shape, colour, bg)
    err = ((img - target) ** 2).flatten(1).sum(1)                                 # [N]
    damping = torch.full((n,), 1e-2, dtype=cx.dtype, device=cx.device)
    eye = torch.eye(3 * k, dtype=cx.dtype, device=cx.device)
    for _ in range(steps):
        resid = (img - target).flatten(1)                                         # [N, M]
        jtj = jac @ jac.transpose(1, 2)                                           # [N, 3K, 3K]
        jtr = (jac @ resid.unsqueeze(-1)).squeeze(-1)
        diag = torch.diagonal(jtj, dim1=1, dim2=2)
        system = jtj + damping[:, None, None] * (torch.diag_embed(diag) + eye)
        step = torch.linalg.solve(system, -jtr.unsqueeze(-1)).squeeze(-1)
        cand = theta + step
        cand.view(n, k, 3)[..., 2].clamp_(*SIZE_LIMITS)
        c_img, c_jac = _composite_with_jacobian(*unpack(cand), shape, colour, bg)
        c_err = ((c_img - target) ** 2).flatten(1).sum(1)
        better = c_err < err
        theta = torch.where(better[:, None], cand, theta)
        img = torch.where(better[:, None, None, None], c_img, img)
        jac = torch.where(better[:, None, None], c_jac, jac)
        err = torch.where(better, c_err, err)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-6, 1e6)
    return unpack(theta)


def fit_frames(frames: torch.Tensor, batch: SceneBatch, steps: int = 10, tolerance: float = 1e-4,
               chunk: int = 512) -> FrameFit:
    """Fit every frame of ``frames`` [B, F, 3, H, W] (pixels in [0, 1]) with the objects of ``batch``.

    Frames whose moment initialisation already renders within ``tolerance`` RMSE are not refined;
    the others are refined ``chunk`` frames at a time.
    """
    b, f, _, h, w = frames.shape
    frames = frames.detach().float()
    bg = background_image(batch.background, h, w)                           # [B, 3, H, W]
    cx, cy, size, mass = _initial_states(frames, batch, bg)                 # [B, K, F]
    img = composite(coverage(cx, cy, size, batch.shape, h, w), batch.colour, bg)
    rmse = ((img - frames) ** 2).mean((2, 3, 4)).sqrt()                     # [B, F]
    bi, fi = (rmse > tolerance).nonzero(as_tuple=True)
    for s in range(0, bi.numel(), chunk):
        ib, jf = bi[s:s + chunk], fi[s:s + chunk]
        states = [v[ib, :, jf] for v in (cx, cy, size)]                    # [N, K]
        new = _refine(*states, batch.shape[ib], batch.colour[ib], bg[ib], frames[ib, jf], steps)
        for v, n in zip((cx, cy, size), new):
            v[ib, :, jf] = n
    cx, cy = torch.remainder(cx, 1.0), torch.remainder(cy, 1.0)
    cover = coverage(cx, cy, size, batch.shape, h, w)
    return FrameFit(cx, cy, size, mass, cover, composite(cover, batch.colour, bg))


def _wrap(d: torch.Tensor) -> torch.Tensor:
    return torch.remainder(d + 0.5, 1.0) - 0.5


def _forward_fill(a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Replace entries with weight 0 by the last entry with weight > 0 (along the last dim)."""
    idx = torch.where(weight > 0, torch.arange(a.shape[-1], device=a.device).expand_as(a), 0).cummax(-1).values
    return a.gather(-1, idx)


def _unwrap(a: torch.Tensor, weight: torch.Tensor, period: float) -> torch.Tensor:
    """Continuous version of a periodic sequence along the last dim (steps < period / 2), gaps filled."""
    a = _forward_fill(a, weight)
    step = torch.remainder(a.diff(dim=-1) + period / 2, period) - period / 2
    return torch.cat([a[..., :1], a[..., :1] + step.cumsum(-1)], dim=-1)


def _mean(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (u * weight).sum(-1, keepdim=True) / weight.sum(-1, keepdim=True).clamp(min=1e-9)


def _slope(u: torch.Tensor, t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted least-squares slope of u [..., F] against t [F] -> [..., 1]."""
    tc = t - _mean(t.expand_as(u), weight)
    return _mean(u * tc, weight) / _mean(tc * tc, weight).clamp(min=1e-12)


def _clamp_signed(v: torch.Tensor, lo: float, hi: float, sign) -> torch.Tensor:
    return sign * (v * sign).clamp(lo, hi)


def _constant_size(size: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _mean(size, weight).clamp(*RANGES["size"]).expand_as(size)


def _pulse_size(size: torch.Tensor, t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Best s + a sin(omega t + phi) within RANGES, per object (weighted grid search on omega, zoomed twice)."""
    lo_range, hi_range = RANGES["pulse_omega"]
    lo = torch.full(size.shape[:-1], lo_range, dtype=size.dtype, device=size.device)  # [B, K]
    hi = torch.full_like(lo, hi_range)
    w = weight[:, :, None, :, None]                                             # [B, K, 1, F, 1]
    best_err = best_fit = None
    for _ in range(3):
        grid = torch.linspace(0, 1, 33, dtype=size.dtype, device=size.device)
        omegas = lo[..., None] + (hi - lo)[..., None] * grid                     # [B, K, G]
        wt = omegas[..., None] * t                                              # [B, K, G, F]
        basis = torch.stack([torch.ones_like(wt), torch.sin(wt), torch.cos(wt)], dim=-1)  # [B, K, G, F, 3]
        gram = basis.transpose(-1, -2) @ (w * basis) + 1e-6 * torch.eye(3, dtype=size.dtype, device=size.device)
        rhs = basis.transpose(-1, -2) @ (w * size[:, :, None, :, None])        # [B, K, G, 3, 1]
        coef = torch.linalg.solve(gram, rhs).squeeze(-1)                        # [B, K, G, 3]
        amp = torch.sqrt(coef[..., 1] ** 2 + coef[..., 2] ** 2)
        mean = coef[..., 0].clamp(*RANGES["pulse_size"])
        wave = (basis[..., 1:] @ coef[..., 1:, None]).squeeze(-1) / amp.clamp(min=1e-9)[..., None]  # [B, K, G, F]
        wave = torch.where((amp > 1e-6)[..., None], wave, basis[..., 1])      # no oscillation: any phase
        fit = mean[..., None] + amp.clamp(*RANGES["pulse_amplitude"])[..., None] * wave
        err = ((fit - size.unsqueeze(2)).abs() * weight.unsqueeze(2)).sum(-1)  # [B, K, G]
        g = err.argmin(-1, keepdim=True)                                        # [B, K, 1]
        err_g = err.gather(-1, g).squeeze(-1)
        fit_g = fit.gather(2, g[..., None].expand(-1, -1, 1, fit.shape[-1])).squeeze(2)
        better = torch.ones_like(err_g, dtype=torch.bool) if best_err is None else err_g < best_err
        best_err = err_g if best_err is None else torch.where(better, err_g, best_err)
        best_fit = fit_g if best_fit is None else torch.where(better[..., None], fit_g, best_fit)
        centre, step = omegas.gather(-1, g).squeeze(-1), (hi - lo) / 32
        lo, hi = (centre - 2 * step).clamp(min=lo_range), (centre + 2 * step).clamp(max=hi_range)
    return best_fit


def fit_motions(cx: torch.Tensor, cy: torch.Tensor, size: torch.Tensor, weight: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Closest constrained trajectory of every motion family to per-frame states [B, K, F].

    ``weight`` [B, K, F] (1 = the object is visible in that frame, 0 = ignore the frame).
    Returns [M, 3, B, K, F]: (x, y, size) of each family in :data:`MOTIONS` order.
    """
    weight = torch.ones_like(cx) if weight is None else weight.to(cx.dtype)
    t = torch.arange(cx.shape[-1], dtype=cx.dtype, device=cx.device)
    still_x = _circular_mean(cx, weight, -1)[..., None].expand_as(cx)
    still_y = _circular_mean(cy, weight, -1)[..., None].expand_as(cy)
    const_size = _constant_size(size, weight)
    out = {"static": (still_x, still_y, const_size)}
    for name, axis, sign in (("left", 0, -1.0), ("right", 0, 1.0), ("up", 1, -1.0), ("down", 1, 1.0)):
        u = _unwrap(cx if axis == 0 else cy, weight, 1.0)
        v = _clamp_signed(_slope(u, t, weight), *RANGES["speed"], sign)
        moving = torch.remainder(_mean(u - v * t, weight) + v * t, 1.0)
        out[name] = ((moving, still_y) if axis == 0 else (still_x, moving)) + (const_size,)
    theta = _unwrap(torch.atan2(cy - 0.5, cx - 0.5), weight, 2 * math.pi)
    omega_hat = _slope(theta, t, weight)
    omega = _clamp_signed(omega_hat, *RANGES["orbit_omega"], torch.where(omega_hat < 0, -1.0, 1.0))
    resid = theta - omega * t
    theta0 = torch.atan2(_mean(torch.sin(resid), weight), _mean(torch.cos(resid), weight))
    radius = _mean(torch.sqrt((cx - 0.5) ** 2 + (cy - 0.5) ** 2), weight).clamp(*RANGES["orbit_radius"])
    out["orbit"] = (0.5 + radius * torch.cos(theta0 + omega * t), 0.5 + radius * torch.sin(theta0 + omega * t),
                    const_size)
    out["pulse"] = (still_x, still_y, _pulse_size(size, t, weight))
    return torch.stack([torch.stack(out[m]) for m in MOTIONS])


def trajectory_distance(fitted: torch.Tensor, cx, cy, size, height: int, width: int) -> torch.Tensor:
    """Pixel distance between states [B, K, F] and fitted trajectories [..., 3, B, K, F] -> [..., B, K, F]."""
    dx = _wrap(cx - fitted[..., 0, :, :, :]) * width
    dy = _wrap(cy - fitted[..., 1, :, :, :]) * height
    return torch.sqrt(dx * dx + dy * dy) + (size - fitted[..., 2, :, :, :]).abs() * min(height, width)
