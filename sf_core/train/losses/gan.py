"""GAN variant (selfforcing.md §7.9), runnable: a discriminator head on the critic's intermediate features.

The critic (a bidirectional Wan DiT, also trained with its flow loss) is the backbone. After selected
transformer blocks (13, 21, 29 of 30 for the 1.3B model) a learned RMS-normalised register token
cross-attends to the video tokens; the concatenated register outputs go through
LayerNorm → Linear → SiLU → Linear to one logit. Both real latents and generated clips are noised to the
same score timestep before classification. Losses are non-saturating (softplus), optionally relativistic,
with an optional finite-difference R1 penalty on real data.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...scheduler import FlowMatchScheduler
from .score import randn_like, sample_score_timestep


def default_feature_layers(num_layers: int) -> tuple[int, ...]:
    """Blocks whose outputs feed the head: (13, 21, 29) for 30 layers, proportionally otherwise."""
    return tuple(sorted({min(num_layers - 1, int(num_layers * f)) for f in (0.45, 0.72, 0.99)}))


class RegisterReadout(nn.Module):
    """One learned token attending to a layer's video tokens [B, L, D] -> [B, D]."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, dim) / dim ** 0.5)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = F.rms_norm(self.token, (self.token.shape[-1],)).expand(tokens.shape[0], -1, -1)
        out, _ = self.attn(query.to(tokens.dtype), self.norm(tokens), self.norm(tokens), need_weights=False)
        return out[:, 0]


class FeatureDiscriminator(nn.Module):
    """Discriminator head; the backbone (the critic) is passed at call time so it is never wrapped twice."""

    def __init__(self, dim: int, num_heads: int, feature_layers: tuple[int, ...], hidden: int | None = None):
        super().__init__()
        self.feature_layers = tuple(feature_layers)
        self.readouts = nn.ModuleList(RegisterReadout(dim, num_heads) for _ in self.feature_layers)
        width = dim * len(self.feature_layers)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden or dim), nn.SiLU(),
                                  nn.Linear(hidden or dim, 1))

    @classmethod
    def for_backbone(cls, backbone) -> "FeatureDiscriminator":
        cfg = backbone.config
        return cls(cfg.dim, cfg.num_heads, default_feature_layers(cfg.num_layers))

    def forward(self, backbone, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Logits [B] for noisy clips x_t [B, F, C, h, w] at timesteps t [B]."""
        feats: dict[int, torch.Tensor] = {}
        hooks = [backbone.blocks[i].register_forward_hook(
            lambda _m, _in, out, i=i: feats.__setitem__(i, out)) for i in self.feature_layers]
        try:
            backbone(x_t, t, context)
        finally:
            for hk in hooks:
                hk.remove()
        pooled = [r(feats[i].float()) for r, i in zip(self.readouts, self.feature_layers)]
        return self.head(torch.cat(pooled, -1))[:, 0]


def _noised(x: torch.Tensor, t: torch.Tensor, rng: torch.Generator, sched: FlowMatchScheduler) -> torch.Tensor:
    return sched.add_noise(x, randn_like(x, rng), t)


def gan_generator_loss(video: torch.Tensor, real: torch.Tensor | None, context: torch.Tensor, critic,
                       discriminator: FeatureDiscriminator, rng: torch.Generator, sched: FlowMatchScheduler,
                       weight: float = 1e-2, relativistic: bool = False, min_step: float = 20.0,
                       max_step: float = 980.0) -> tuple[torch.Tensor, dict[str, float]]:
    """weight · softplus(−D(fake)) (relativistic: softplus(−(D(fake) − D(real)))).

    The backward also reaches the critic and head parameters; the critic update zeroes them first."""
    t = sample_score_timestep(video.shape[0], rng, sched.shift, min_step, max_step, device=video.device)
    fake_logit = discriminator(critic, _noised(video, t, rng, sched), t, context)
    if relativistic:
        if real is None:
            raise ValueError("relativistic GAN needs real latents (TrainBatch.latents)")
        with torch.no_grad():
            real_logit = discriminator(critic, _noised(real.to(video), t, rng, sched), t, context)
        fake_logit = fake_logit - real_logit
    loss = weight * F.softplus(-fake_logit.float()).mean()
    return loss, {"gan_g_loss": float(loss.detach()), "gan_fake_logit": float(fake_logit.detach().mean())}


def gan_discriminator_loss(fake: torch.Tensor, real: torch.Tensor, context: torch.Tensor, critic,
                           discriminator: FeatureDiscriminator, rng: torch.Generator, sched: FlowMatchScheduler,
                           weight: float = 1e-2, relativistic: bool = False, r1_weight: float = 0.0,
                           r1_sigma: float = 0.01, min_step: float = 20.0, max_step: float = 980.0
                           ) -> tuple[torch.Tensor, dict[str, float]]:
    """weight · [softplus(D(fake)) + softplus(−D(real))] (+ r1_weight · finite-difference R1 on real)."""
    fake = fake.detach()
    t = sample_score_timestep(fake.shape[0], rng, sched.shift, min_step, max_step, device=fake.device)
    real_t = _noised(real.to(fake), t, rng, sched)
    fake_logit = discriminator(critic, _noised(fake, t, rng, sched), t, context).float()
    real_logit = discriminator(critic, real_t, t, context).float()
    if relativistic:
        d_loss = F.softplus(fake_logit - real_logit).mean()
    else:
        d_loss = (F.softplus(fake_logit) + F.softplus(-real_logit)).mean()
    loss = weight * d_loss
    metrics = {"gan_d_loss": float(loss.detach()), "gan_real_logit": float(real_logit.detach().mean()),
               "gan_fake_logit": float(fake_logit.detach().mean())}
    if r1_weight:
        # E[(D(x + σn) − D(x))²] / σ² ≈ E[(∇D·n)²] = ‖∇D(x)‖²
        bumped = discriminator(critic, real_t + r1_sigma * randn_like(real_t, rng), t, context).float()
        r1 = ((bumped - real_logit) ** 2).mean() / r1_sigma ** 2
        loss = loss + r1_weight * r1
        metrics["gan_r1"] = float(r1.detach())
    return loss, metrics
