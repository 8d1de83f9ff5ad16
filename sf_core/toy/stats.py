"""Confidence intervals for means over samples (Student t or percentile bootstrap), torch only."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _t_cdf(t: float, dof: int) -> float:
    """P(T <= t) for integer ``dof`` (Abramowitz & Stegun 26.7.3-4, a finite series)."""
    theta = math.atan(abs(t) / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if dof % 2:
        term, total = math.cos(theta), math.cos(theta) if dof > 1 else 0.0
        for k in range(3, dof - 1, 2):
            term *= c2 * (k - 1) / k
            total += term
        inside = 2 / math.pi * (theta + s * total)
    else:
        term, total = 1.0, 1.0
        for k in range(2, dof - 1, 2):
            term *= c2 * (k - 1) / k
            total += term
        inside = s * total
    return 0.5 + math.copysign(inside / 2, t)


def t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t: the Cornish-Fisher expansion (A&S 26.7.5) polished by Newton steps on the
    exact CDF (exact closed forms for 1 and 2 degrees of freedom)."""
    if dof < 1:
        raise ValueError(f"t_quantile: dof must be >= 1, got {dof}")
    if dof == 1:
        return math.tan(math.pi * (p - 0.5))
    if dof == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    t = z + g1 / dof + g2 / dof ** 2 + g3 / dof ** 3 + g4 / dof ** 4
    if dof > 1000:
        return t
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    for _ in range(4):
        density = math.exp(log_norm - (dof + 1) / 2 * math.log1p(t * t / dof))
        t -= (_t_cdf(t, dof) - p) / density
    return t


def mean_ci(values: torch.Tensor, level: float = 0.95, method: str = "t", resamples: int = 2000,
            seed: int = 0) -> Estimate:
    """Mean of ``values`` [N] (NaNs dropped) with a two-sided ``level`` interval ("t" or "bootstrap")."""
    x = values.detach().double().flatten()
    x = x[~torch.isnan(x)]
    n = x.numel()
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    alpha = (1 - level) / 2
    if method == "t":
        half = t_quantile(1 - alpha, n - 1) * float(x.std(unbiased=True)) / math.sqrt(n)
        return Estimate(mean, mean - half, mean + half, n)
    if method == "bootstrap":
        gen = torch.Generator().manual_seed(seed)
        means = x[torch.randint(0, n, (resamples, n), generator=gen)].mean(1)
        lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
        return Estimate(mean, lo, hi, n)
    raise ValueError(f"mean_ci: method must be 't' or 'bootstrap', got {method!r}")
