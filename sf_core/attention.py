"""Attention backends: SDPA (default), flash-attn on CUDA when installed, flex_attention for masks."""
from __future__ import annotations

import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flash", "math")
_HAS_FLASH = importlib.util.find_spec("flash_attn") is not None


def flash_available(device: torch.device, dtype: torch.dtype) -> bool:
    return _HAS_FLASH and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Unmasked attention. q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D]."""
    if backend in ("auto", "flash") and flash_available(q.device, q.dtype):
        from flash_attn import flash_attn_func
        return flash_attn_func(q, k, v)
    if backend == "flash":
        raise RuntimeError("attention backend 'flash' needs the flash-attn package, a CUDA device and "
                           "bf16/fp16 tensors; use 'sdpa' instead")
    if backend == "math":
        scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / q.shape[-1] ** 0.5
        return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.float()).to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def dense_mask(mask_mod: MaskMod, q_len: int, kv_len: int, device) -> torch.Tensor:
    """Boolean [q_len, kv_len] mask from a flex-style mask_mod(b, h, q_idx, kv_idx)."""
    qi = torch.arange(q_len, device=device).view(-1, 1)
    ki = torch.arange(kv_len, device=device).view(1, -1)
    zero = torch.zeros((), dtype=torch.long, device=device)
    return mask_mod(zero, zero, qi, ki)


def _flex_usable(q: torch.Tensor) -> bool:
    if q.device.type != "cuda":
        return False
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_compiled_flex = None


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_mod: MaskMod,
                     use_flex: bool | None = None) -> torch.Tensor:
    """Masked attention for parallel (training) forwards: flex_attention on CUDA, dense-mask SDPA otherwise."""
    lq, lk = q.shape[1], k.shape[1]
    if use_flex is None:
        use_flex = _flex_usable(q)
    if use_flex:
        global _compiled_flex
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        block_mask = create_block_mask(mask_mod, None, None, lq, lk, device=q.device)
        out = _compiled_flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
        return out.transpose(1, 2)
    mask = dense_mask(mask_mod, lq, lk, q.device)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)
