"""Frame and trajectory fitting against known ground truth."""
import torch

from sf_core.toy.fit import _composite_with_jacobian, _layers, fit_frames, fit_motions, trajectory_distance
from sf_core.toy.render import SceneBatch, background_image, coverage, render, trajectories
from sf_core.toy.world import MOTIONS, sample_scenes


def _states(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = SceneBatch(sample_scenes(n, seed))
    k = batch.shape.shape[1]
    cx, cy, size = torch.rand(3, n, k, generator=g, dtype=torch.float64)
    return batch, cx, cy, 0.06 + 0.1 * size


def test_fit_layers_match_the_renderer():
    batch, cx, cy, size = _states()
    a, _ = _layers(cx, cy, size, batch.shape, 24, 40)
    ref = coverage(cx[..., None], cy[..., None], size[..., None], batch.shape, 24, 40)[:, :, 0]
    assert torch.allclose(a, ref, atol=1e-12)


def test_jacobian_matches_finite_differences():
    batch, cx, cy, size = _states(seed=1)
    colour, bg = batch.colour.double(), background_image(batch.background.double(), 32, 32)
    k = cx.shape[1]
    theta = torch.stack([cx, cy, size], -1)                                  # [N, K, 3]
    _, jac = _composite_with_jacobian(cx, cy, size, batch.shape, colour, bg)
    eps = 1e-6
    for i in range(3 * k):
        e = torch.zeros_like(theta).view(-1, 3 * k)
        e[:, i] = eps
        plus = _composite_with_jacobian(*(theta + e.view_as(theta)).unbind(-1), batch.shape, colour, bg)[0]
        minus = _composite_with_jacobian(*(theta - e.view_as(theta)).unbind(-1), batch.shape, colour, bg)[0]
        numeric = ((plus - minus) / (2 * eps)).flatten(1)                    # [N, 3HW]
        analytic = jac[:, i]
        # equal except on the measure-zero kinks of the distance functions (square diagonals, triangle edges)
        close = (numeric - analytic).abs() < 1e-4 * (1 + numeric.abs())
        assert close.float().mean() > 0.995


def test_fit_frames_recovers_the_true_states():
    scenes = sample_scenes(8, 3)
    batch = SceneBatch(scenes)
    video = render(scenes, 6)
    fit = fit_frames(video, batch)
    assert ((fit.frames - video) ** 2).mean((2, 3, 4)).sqrt().max() < 5e-3
    x, y, r = trajectories(batch, torch.arange(6.0))
    visible = (batch.shape >= 0)[..., None] & (fit.cover.sum((-1, -2)) > 4)
    dx = (fit.cx - x + 0.5) % 1 - 0.5
    assert dx[visible].abs().max() * 32 < 0.25 and (fit.size - r)[visible].abs().max() * 32 < 0.25


def test_fit_motions_identifies_every_family():
    scenes = sample_scenes(60, 4)
    batch = SceneBatch(scenes)
    x, y, r = trajectories(batch, torch.arange(16.0))
    families = fit_motions(x.double(), y.double(), r.double())
    dist = trajectory_distance(families, x.double(), y.double(), r.double(), 32, 32).mean(-1)   # [M, B, K]
    present = batch.shape >= 0
    assert torch.equal(dist.argmin(0)[present], batch.motion[present])
    own = dist.gather(0, batch.motion[None]).squeeze(0)
    assert own[present].max() < 0.05                                          # pixels
    assert set(batch.motion[present].tolist()) == set(range(len(MOTIONS)))
