"""umT5 encoder (T5 v1.1 style): RMS norm without bias, gated-GELU FFN, per-layer relative position bias.

Parameter names follow the official Wan `T5Encoder` (`models_t5_umt5-xxl-enc-bf16.pth`), so that file loads as is.
Numerics follow the official module: no 1/sqrt(d) scaling of attention logits, softmax in float32, norm statistics
in float32, padding masked with the dtype's most negative value, fp16 activations clamped when they overflow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UMT5Config:
    """Shape of a umT5 encoder. Defaults are umT5-XXL as used by Wan2.1."""

    vocab_size: int = 256384
    dim: int = 4096            # d_model
    num_layers: int = 24
    num_heads: int = 64
    head_dim: int = 64         # d_kv
    ffn_dim: int = 10240
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6


UMT5_XXL = UMT5Config()


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """Bidirectional T5 bucket of `key_pos - query_pos`.

    Half the buckets hold positive offsets. Within a half, offsets below a quarter of `num_buckets` get one bucket
    each; larger ones are spaced logarithmically up to `max_distance`, beyond which they share the last bucket.
    """
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half
    distance = relative_position.abs()
    exact = half // 2
    log_ratio = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (half - exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, far)


class RMSNorm(nn.Module):
    """T5 layer norm: scale by the root mean square (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(self.weight.dtype)


class RelativePositionBias(nn.Module):
    """Learned per-head bias indexed by the relative-position bucket."""

    def __init__(self, num_buckets: int, num_heads: int):
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        """`buckets` `[Lq, Lk]` -> bias `[1, H, Lq, Lk]`."""
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q = nn.Linear(dim, inner, bias=False)
        self.k = nn.Linear(dim, inner, bias=False)
        self.v = nn.Linear(dim, inner, bias=False)
        self.o = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """`x` `[B, L, D]`, `bias` `[B, H, L, L]` (position bias plus padding mask)."""
        b, length, _ = x.shape
        q, k, v = (proj(x).view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))  # [B, H, L, d]
        logits = q @ k.transpose(-1, -2) + bias  # [B, H, L, L]; T5 does not scale by 1/sqrt(d)
        weights = logits.float().softmax(dim=-1).to(v.dtype)
        out = (weights @ v).transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim)
        return self.o(out)


class GatedGELUFeedForward(nn.Module):
    """`fc2(fc1(x) * gelu_tanh(gate(x)))` — T5 v1.1 `wi_1`, `wi_0`, `wo`."""

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, ffn_dim, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, ffn_dim, bias=False)
        self.fc2 = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


def _clamp_fp16_overflow(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(min=-limit, max=limit)
    return x


class EncoderBlock(nn.Module):
    def __init__(self, config: UMT5Config):
        super().__init__()
        self.norm1 = RMSNorm(config.dim, config.eps)
        self.attn = SelfAttention(config.dim, config.num_heads, config.head_dim)
        self.norm2 = RMSNorm(config.dim, config.eps)
        self.ffn = GatedGELUFeedForward(config.dim, config.ffn_dim)
        self.pos_embedding = RelativePositionBias(config.num_buckets, config.num_heads)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        """`x` `[B, L, D]`; `keep` bool `[B, 1, 1, L]`, False on padding keys; `buckets` `[L, L]`."""
        bias = self.pos_embedding(buckets).to(x.dtype).expand(x.shape[0], -1, -1, -1)  # [B, H, L, L]
        bias = bias.masked_fill(~keep, torch.finfo(x.dtype).min)
        x = _clamp_fp16_overflow(x + self.attn(self.norm1(x), bias))
        return _clamp_fp16_overflow(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """Encoder-only umT5. `forward(ids [B, L], mask [B, L]) -> [B, L, dim]` (padding rows are not zeroed)."""

    def __init__(self, config: UMT5Config = UMT5_XXL):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.dim, config.eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids)  # [B, L, D]
        keep = mask.bool()[:, None, None, :]  # [B, 1, 1, L]
        pos = torch.arange(ids.shape[1], device=ids.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.config.num_buckets,
                                           self.config.max_distance)  # [L, L], key minus query
        for block in self.blocks:
            x = block(x, keep, buckets)
        return self.norm(x)

