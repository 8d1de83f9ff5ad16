"""Confidence intervals."""
import math

import pytest
import torch

from sf_core.toy.stats import mean_ci, t_quantile


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 10, 30, 200])
def test_t_quantile_matches_scipy(dof):
    scipy_stats = pytest.importorskip("scipy.stats")
    for p in (0.9, 0.95, 0.975, 0.995):
        assert t_quantile(p, dof) == pytest.approx(float(scipy_stats.t.ppf(p, dof)), rel=1e-9)


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_intervals_cover_the_mean_and_shrink_with_n(method):
    g = torch.Generator().manual_seed(0)
    widths, hits = [], 0
    for n in (10, 40, 160, 640):
        x = 2.0 + torch.randn(n, generator=g)
        est = mean_ci(x, method=method)
        assert est.low < est.mean < est.high and est.n == n
        hits += est.low < 2.0 < est.high
        widths.append(est.high - est.low)
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[0] / widths[-1] == pytest.approx(8.0, rel=0.35)      # ~ 1 / sqrt(n)
    assert hits >= 3


def test_t_interval_coverage_is_nominal():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 8, generator=g)
    hits = sum(mean_ci(row).low < 0 < mean_ci(row).high for row in x)
    assert 0.93 < hits / 2000 < 0.97


def test_nans_and_degenerate_inputs():
    est = mean_ci(torch.tensor([1.0, float("nan"), 3.0]))
    assert est.n == 2 and est.mean == 2.0
    assert math.isnan(mean_ci(torch.tensor([1.0])).low)
    assert mean_ci(torch.tensor([])).n == 0
    with pytest.raises(ValueError, match="method"):
        mean_ci(torch.ones(3), method="normal")
