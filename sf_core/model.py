"""The causal Wan2.1 DiT with KV cache, read top to bottom.

Numerics follow the official Self-Forcing model (selfforcing.md §2): per-frame timesteps `[B, F]`,
a float64 [cos, sin] sinusoid, per-frame adaLN with six vectors, qk RMSNorm over the full width, an
affine `norm3` before cross-attention, GELU (tanh), text zero-padded to 512 with no padding mask, RoPE
in float64, and Wan2.1's fp32 autocast regions removed (everything else runs in the model dtype).
Parameter names are the official Wan2.1 ones, so official state dicts load with `strict=True`.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import attention, masked_attention
from .cache import KVCache
from .config import ModelConfig
from .rope import fast_freqs, grid_freqs, rotate


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[cos(t·ω), sin(t·ω)] with ω_k = 10000^(-k/(dim/2)), in float64. t [N] -> [N, dim]."""
    half = dim // 2
    t = t.to(torch.float64)
    omega = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    angles = torch.outer(t, omega)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class RMSNorm(nn.Module):
    """Normalise in float32, cast back, then scale in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm in the activation dtype (the official Self-Forcing path does not upcast)."""

    def __init__(self, dim: int, eps: float, affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=affine)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """x [B, F*S, D] with per-frame shift/scale [B, F, 1, D]."""
    b, length, d = x.shape
    return (x.view(b, frames, length // frames, d) * (1 + scale) + shift).view(b, length, d)


def _gate(x: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    b, length, d = x.shape
    return (x.view(b, frames, length // frames, d) * gate).view(b, length, d)


ROPE_MODES = ("exact", "fast")
TIME_MEMO_SIZE = 16  # time embeddings kept per model (a stream uses 5: 4 denoising steps + the cache pass)


def _tracing() -> bool:
    """Inside torch.compile or a CUDA-graph capture, where a Python-side memo must not be consulted."""
    return torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def _untracked(t: torch.Tensor, model) -> bool:
    """Inference tensors (made under `torch.inference_mode`, as ComfyUI runs nodes) have no version counter,
    so the time-embedding memo cannot tell whether they changed: it is skipped for them."""
    return t.is_inference() or any(p.is_inference() for p in model._time_params())


def rope_freqs(frames: int, height: int, width: int, head_dim: int, start_frame: int, device,
               mode: str = "exact") -> torch.Tensor:
    """RoPE rotations of a token grid: exact complex128 [L, 1, head_dim/2], or fast float32 [L, 1, head_dim/2, 2]."""
    freqs = grid_freqs(frames, height, width, head_dim, start_frame, device)
    return freqs if mode == "exact" else fast_freqs(freqs)


class Geometry:
    """Token grid of one forward call: frames × (h × w) tokens starting at latent frame `start_frame`.
    `freqs` may be given precomputed (e.g. a static buffer for CUDA-graph replay)."""

    def __init__(self, frames: int, height: int, width: int, start_frame: int, head_dim: int, device,
                 rope: str = "exact", freqs: torch.Tensor | None = None):
        self.frames, self.height, self.width, self.start_frame = frames, height, width, start_frame
        self.frame_tokens = height * width
        if freqs is None:
            freqs = rope_freqs(frames, height, width, head_dim, start_frame, device, rope)
        self.freqs = freqs  # [L, 1, head_dim/2] complex, or [L, 1, head_dim/2, 2] float (fast mode)


class Attention(nn.Module):
    """q/k/v/o projections with RMSNorm on q and k over the full width (shared by both attentions)."""

    def __init__(self, cfg: ModelConfig, backend: str):
        super().__init__()
        self.num_heads, self.head_dim, self.backend = cfg.num_heads, cfg.head_dim, backend
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()


class SelfAttention(Attention):
    def qkv(self, x: torch.Tensor, freqs: torch.Tensor):
        b, length, _ = x.shape
        shape = (b, length, self.num_heads, self.head_dim)
        q = rotate(self.norm_q(self.q(x)).view(shape), freqs)
        k = rotate(self.norm_k(self.k(x)).view(shape), freqs)
        return q, k, self.v(x).view(shape)

    def forward(self, x, geo: Geometry, cache: KVCache | None, layer: int):
        q, k, v = self.qkv(x, geo.freqs)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        return self.o(attention(q, k, v, self.backend).flatten(2))


class CrossAttention(Attention):
    def __init__(self, cfg: ModelConfig, backend: str):
        super().__init__(cfg, backend)
        self.image = cfg.model_type == "i2v"
        if self.image:
            self.k_img, self.v_img = nn.Linear(cfg.dim, cfg.dim), nn.Linear(cfg.dim, cfg.dim)
            self.norm_k_img = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()

    def _heads(self, t):
        return t.view(t.shape[0], t.shape[1], self.num_heads, self.head_dim)

    def context_kv(self, context: torch.Tensor):
        return self._heads(self.norm_k(self.k(context))), self._heads(self.v(context))

    def forward(self, x, context, cache: KVCache | None, layer: int, image_context=None):
        """With a cache, context K/V are computed once per prompt and reused."""
        q = self._heads(self.norm_q(self.q(x)))
        if cache is not None:
            if not cache.cross_ready:
                k, v = self.context_kv(context)
                cache.cross_k[layer].copy_(k)
                cache.cross_v[layer].copy_(v)
            k, v = cache.cross_k[layer], cache.cross_v[layer]
        else:
            k, v = self.context_kv(context)
        out = attention(q, k, v, self.backend)
        if self.image:
            if image_context is None:
                raise ValueError("an i2v model needs CLIP image features (image_context)")
            ki = self._heads(self.norm_k_img(self.k_img(image_context)))
            out = out + attention(q, ki, self._heads(self.v_img(image_context)), self.backend)
        return self.o(out.flatten(2))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: str):
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, cfg.eps)
        self.self_attn = SelfAttention(cfg, backend)
        self.norm3 = LayerNorm(cfg.dim, cfg.eps, affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg, backend)
        self.norm2 = LayerNorm(cfg.dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e0, context, geo: Geometry, cache: KVCache | None, layer: int, attend=None,
                image_context=None, cross_cache: KVCache | None = None):
        """x [B, L, D]; e0 [B, F, 6, D]; `attend` replaces self-attention for masked parallel forwards."""
        frames = e0.shape[1]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.unsqueeze(1) + e0).chunk(6, dim=2)
        h = _modulate(self.norm1(x), shift_sa, scale_sa, frames)
        y = attend(self.self_attn, h) if attend is not None else self.self_attn(h, geo, cache, layer)
        x = x + _gate(y, gate_sa, frames)
        x = x + self.cross_attn(self.norm3(x), context, cross_cache, layer, image_context)
        y = self.ffn(_modulate(self.norm2(x), shift_ff, scale_ff, frames))
        return x + _gate(y, gate_ff, frames)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e):
        """x [B, L, D]; e [B, F, D] (the time_embedding output, not e0)."""
        shift, scale = (self.modulation.unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)
        return self.head(_modulate(self.norm(x), shift, scale, e.shape[1]))


class ImageEmbedding(nn.Module):
    """Projection of 1280-d CLIP image features (Wan i2v models only)."""

    def __init__(self, cfg: ModelConfig, clip_dim: int = 1280):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(clip_dim), nn.Linear(clip_dim, clip_dim), nn.GELU(),
                                  nn.Linear(clip_dim, cfg.dim), nn.LayerNorm(cfg.dim))

    def forward(self, x):
        return self.proj(x)


class CausalWanModel(nn.Module):
    """Wan2.1 DiT run causally: chunk-wise with a KV cache, or in parallel with a block-causal mask.

    `rope="fast"` opts into float32 RoPE (see sf_core/rope.py); the default "exact" is the official float64.
    """

    def __init__(self, config: ModelConfig, attention: str = "auto", rope: str = "exact"):
        super().__init__()
        if rope not in ROPE_MODES:
            raise ValueError(f"rope must be one of {ROPE_MODES}, got {rope!r}")
        cfg = self.config = config
        self.attention_backend = attention
        self.rope = rope
        self.checkpoint_blocks = False  # recompute each block in backward (uncached or read-only-cache forwards)
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(Block(cfg, attention) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        if cfg.model_type == "i2v":
            self.img_emb = ImageEmbedding(cfg)
        self._time_memo: dict | None = None  # see embed_time: {} turns the reuse on (the speed levels do)

    # -- shared pieces ----------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def frame_tokens(self, height: int, width: int) -> int:
        """Tokens per latent frame for a latent of height × width."""
        _, ph, pw = self.config.patch_size
        return (height // ph) * (width // pw)

    def embed_video(self, x: torch.Tensor):
        """x [B, F, C, H, W] -> tokens [B, F*h*w, D], grid (F, h, w)."""
        x = self.patch_embedding(x.permute(0, 2, 1, 3, 4).to(self.dtype))  # [B, D, F, h, w]
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid

    def embed_time(self, t: torch.Tensor, frames: int):
        """t [B, F] or [B] -> e [B, F, D], e0 [B, F, 6, D].

        With the memo on (`_time_memo = {}`, set by `sf_core.speed.settings.accelerate`; off by default, so
        training never sees it) and without autograd, the result for a timestep tensor seen before (the same
        tensor object, unmodified, same time-path weights) is reused: a stream has 5 timestep values, each
        passed as one tensor that the pipeline keeps, so the time MLP runs 5 times per stream instead of 5
        times per chunk."""
        memo = self._time_memo
        key = None
        if memo is not None and not torch.is_grad_enabled() and not _tracing() and not _untracked(t, self):
            key = (id(t), t._version, frames, tuple((p.data_ptr(), p.dtype, p._version) for p in self._time_params()))
            hit = memo.get(key)
            if hit is not None and hit[0] is t:
                return hit[1], hit[2]
        e, e0 = self._embed_time(t, frames)
        if key is not None:
            memo[key] = (t, e, e0)  # holds t, so its id cannot be reused while the entry lives
            while len(memo) > TIME_MEMO_SIZE:
                memo.pop(next(iter(memo)))
        return e, e0

    def _time_params(self):
        return (*self.time_embedding.parameters(), *self.time_projection.parameters())

    def _embed_time(self, t: torch.Tensor, frames: int):
        if t.dim() == 1:
            t = t[:, None].expand(-1, frames)
        b = t.shape[0]
        e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t.flatten()).to(self.dtype))
        e0 = self.time_projection(e).unflatten(1, (6, self.config.dim))
        return e.view(b, frames, -1), e0.view(b, frames, 6, -1)

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """context [B, L, text_dim] -> [B, text_len, D]; zero-padded or truncated to text_len, no mask."""
        n = self.config.text_len
        context = context[:, :n].to(self.dtype)
        if context.shape[1] < n:
            context = F.pad(context, (0, 0, 0, n - context.shape[1]))
        return self.text_embedding(context)

    def unpatchify(self, x: torch.Tensor, grid) -> torch.Tensor:
        """x [B, F*h*w, C*pt*ph*pw] -> [B, F, C, H, W]."""
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        c = self.config.out_dim
        x = x.view(x.shape[0], f, h, w, pt, ph, pw, c)
        x = torch.einsum("bfhwpqrc->bfpchqwr", x)
        return x.reshape(x.shape[0], f * pt, c, h * ph, w * pw)

    def _image_context(self, image_features):
        return None if image_features is None else self.img_emb(image_features.to(self.dtype))

    # -- chunk forward (inference and self-forcing rollouts) ------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cache: KVCache | None = None,
                start_frame: int = 0, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Flow prediction v = ε − x0 for x [B, F, C, H, W] at per-frame timesteps t [B, F].

        With a cache, x is the chunk starting at absolute latent frame `start_frame`; its K/V are written
        to the cache (post-RoPE) and it attends to everything the cache holds plus itself.
        Without a cache, attention is bidirectional over x.
        """
        cross_cache = self.cross_cache_for(cache)
        if cache is not None:
            self.begin_cache(cache, x, start_frame)
        out = self.forward_planned(x, t, context, cache, cross_cache, start_frame, image_features)
        if cache is not None:
            cache.end()
        if cross_cache is not None:
            cross_cache.cross_ready = True
        return out

    def cross_cache_for(self, cache: KVCache | None) -> KVCache | None:
        """The cache whose cross-attention K/V may be reused: none under autograd, so training recomputes
        them (gradients reach the context projections and LoRA adapters; no cached tensor is saved for
        backward and later overwritten in place)."""
        return None if cache is None or torch.is_grad_enabled() else cache

    def begin_cache(self, cache: KVCache, x: torch.Tensor, start_frame: int) -> None:
        """Plan this call's cache write (and evict, in rolling mode) for the chunk x [B, F, C, H, W]."""
        frame_tokens = self.frame_tokens(x.shape[-2], x.shape[-1])
        if cache.frame_tokens != frame_tokens:
            raise ValueError(f"cache was allocated for {cache.frame_tokens} tokens per frame, "
                             f"this input has {frame_tokens}; allocate a cache for this resolution")
        cache.begin(start_frame * frame_tokens, x.shape[1] * frame_tokens)

    def forward_planned(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None,
                        cache: KVCache | None, cross_cache: KVCache | None, start_frame: int = 0,
                        image_features: torch.Tensor | None = None,
                        freqs: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor work of `forward`, after `begin_cache` (cache bookkeeping stays outside, so this part
        has static shapes per cache plan and can be compiled or captured in a CUDA graph).
        `freqs` overrides the RoPE rotations (precomputed for the chunk's positions)."""
        tokens, grid = self.embed_video(x)
        e, e0 = self.embed_time(t, grid[0])
        ctx = None if cross_cache is not None and cross_cache.cross_ready else self.embed_text(context)
        geo = Geometry(grid[0], grid[1], grid[2], start_frame, self.config.head_dim, tokens.device,
                       self.rope, freqs)
        img = self._image_context(image_features)
        # a writing cache would be written twice by the recomputation; a read-only view (the rollout's exit step) not
        recompute = (self.checkpoint_blocks and torch.is_grad_enabled()
                     and (cache is None or not getattr(cache, "writable", True)))
        for i, block in enumerate(self.blocks):
            run = functools.partial(checkpoint, block, use_reentrant=False) if recompute else block
            tokens = run(tokens, e0, ctx, geo, cache, i, image_context=img, cross_cache=cross_cache)
        return self.unpatchify(self.head(tokens, e), grid).to(x.dtype)

    # -- parallel forwards (training baselines, ODE regression, equivalence tests) ---------------------------
    def forward_parallel(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, chunk_frames: int = 3,
                         window: int = -1, clean_x: torch.Tensor | None = None,
                         clean_t: torch.Tensor | None = None, use_flex: bool | None = None) -> torch.Tensor:
        """Whole-clip forward with a block-causal mask (diffusion forcing / ODE regression), or — given
        `clean_x` — teacher forcing: the sequence is [clean | noisy], both halves use temporal positions
        0..F−1, clean tokens attend block-causally to clean tokens, a noisy chunk attends to itself and to
        the clean chunks before it; `clean_t` defaults to 0. Returns the flow for x only.
        """
        tokens, grid = self.embed_video(x)
        frames, ft = grid[0], grid[1] * grid[2]
        block = chunk_frames * ft
        n = tokens.shape[1]
        geo = Geometry(frames, grid[1], grid[2], 0, self.config.head_dim, tokens.device, self.rope)
        e, e0 = self.embed_time(t, frames)
        win = window * ft
        if clean_x is None:
            def mask_mod(b, h, q, kv):
                end = (q // block + 1) * block
                allowed = kv < end
                return allowed & (kv >= end - win) if window != -1 else allowed
            freqs, all_e0 = geo.freqs, e0
        else:
            clean_tokens, _ = self.embed_video(clean_x)
            if clean_t is None:
                clean_t = torch.zeros_like(t)
            _, ce0 = self.embed_time(clean_t, frames)
            tokens = torch.cat([clean_tokens, tokens], 1)
            freqs, all_e0 = torch.cat([geo.freqs, geo.freqs], 0), torch.cat([ce0, e0], 1)

            def mask_mod(b, h, q, kv):
                q_noisy = q >= n
                qb = torch.where(q_noisy, q - n, q) // block
                kv_noisy = kv >= n
                clean_ok = ~kv_noisy & (kv < (qb + 1) * block)
                noisy_ok = q_noisy & kv_noisy & ((kv - n) // block == qb)
                noisy_clean_ok = q_noisy & ~kv_noisy & (kv < qb * block)
                return torch.where(q_noisy, noisy_ok | noisy_clean_ok, clean_ok)

        def attend(attn: SelfAttention, h):
            q, k, v = attn.qkv(h, freqs)
            return attn.o(masked_attention(q, k, v, mask_mod, use_flex).flatten(2))

        ctx = self.embed_text(context)
        img = self._image_context(image_features=None)
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, all_e0, ctx, geo, None, i, attend=attend, image_context=img)
        out = self.head(tokens[:, -n:], e)
        return self.unpatchify(out, grid).to(x.dtype)
