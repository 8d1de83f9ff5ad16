import pytest
import torch

from sf_core.scheduler import FlowMatchScheduler


def test_grid_shift_5():
    s = FlowMatchScheduler(5.0)
    assert s.timesteps.shape == (1000,)
    assert s.timesteps[0].item() == 1000.0
    assert s.timesteps[-1].item() == pytest.approx(4.98, abs=1e-3)
    u = 0.25
    assert s.sigmas[750].item() == pytest.approx(5 * u / (1 + 4 * u), abs=1e-6)


@pytest.mark.parametrize("shift,expected", [(5.0, [1000.0, 937.5, 833.3333, 625.0]),
                                            (8.0, [1000.0, 960.0, 888.8889, 727.2727])])
def test_warped_steps(shift, expected):
    assert FlowMatchScheduler(shift).warp([1000, 750, 500, 250]) == pytest.approx(expected, abs=1e-3)


def test_nearest_grid_lookup_and_t0_snaps_to_smallest_sigma():
    s = FlowMatchScheduler(5.0)
    t = torch.tensor([937.5, 937.4, 0.0])
    idx = s.index(t)
    assert idx[0] == idx[1] == 250
    assert idx[2] == 999
    assert s.sigma(torch.tensor([0.0])).item() == pytest.approx(0.00498, abs=1e-5)


def test_add_noise_and_x0_roundtrip_per_frame():
    s = FlowMatchScheduler(5.0)
    x0, eps = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    t = torch.tensor([[1000.0, 937.5, 625.0], [833.3333, 625.0, 1000.0]])
    xt = s.add_noise(x0, eps, t)
    sig = s.sigma(t)
    assert torch.allclose(xt, (1 - sig[..., None, None, None]) * x0 + sig[..., None, None, None] * eps, atol=1e-6)
    v = eps - x0
    back = s.to_x0(xt, v, t)
    assert (back - x0).abs().max() < 1e-5
    assert (s.to_flow(xt, x0, t) - v).abs().max() < 1e-4


def test_x0_conversion_runs_in_float64():
    s = FlowMatchScheduler(5.0)
    xt = torch.full((1, 1, 1, 1, 1), 1.0, dtype=torch.bfloat16)
    v = torch.full((1, 1, 1, 1, 1), 0.5, dtype=torch.bfloat16)
    out = s.to_x0(xt, v, torch.tensor([[625.0]]))
    assert out.dtype == torch.bfloat16
    assert out.item() == pytest.approx(1.0 - 0.625 * 0.5, abs=4e-3)
