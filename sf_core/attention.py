"""Attention backends: SDPA (default), flash-attn on CUDA when installed, flex_attention for masks.

Unmasked attention backends (`attention(..., backend)`):
  auto       flash-attn when usable, else PyTorch SDPA with its own kernel choice (the default)
  sdpa       PyTorch SDPA, PyTorch picks the kernel
  flash      the flash-attn package (CUDA, fp16/bf16)
  cudnn      SDPA restricted to the cuDNN attention kernel (CUDA, fp16/bf16)
  efficient  SDPA restricted to the memory-efficient kernel (CUDA)
  math       plain float32 softmax(q·kᵀ/√d)·v (reference)
`resolve_backend` turns a request into the concrete kernel, or says why it cannot run.
"""
from __future__ import annotations

import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flash", "cudnn", "efficient", "math")
_HAS_FLASH = importlib.util.find_spec("flash_attn") is not None
_HALF = (torch.float16, torch.bfloat16)


def flash_available(device: torch.device, dtype: torch.dtype) -> bool:
    return _HAS_FLASH and device.type == "cuda" and dtype in _HALF


def _cudnn_attention_available() -> bool:
    return torch.cuda.is_available() and torch.backends.cudnn.is_available()


def resolve_backend(backend: str, device_type: str, dtype: torch.dtype, has_flash: bool | None = None,
                    has_cudnn: bool | None = None) -> str:
    """The concrete kernel for a requested backend on (device_type, dtype): 'flash', 'sdpa', 'cudnn',
    'efficient' or 'math'. Raises ValueError naming the reason when the request cannot run.
    `has_flash` / `has_cudnn` default to what this machine has (injectable for tests)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    has_flash = _HAS_FLASH if has_flash is None else has_flash
    cuda, half = device_type == "cuda", dtype in _HALF
    if backend == "auto":
        return "flash" if has_flash and cuda and half else "sdpa"
    if backend == "flash" and not (has_flash and cuda and half):
        raise ValueError("attention backend 'flash' needs the flash-attn package, a CUDA device and "
                         "bf16/fp16 tensors; use 'sdpa' instead")
    if backend == "cudnn":
        has_cudnn = _cudnn_attention_available() if has_cudnn is None else has_cudnn
        if not (cuda and half and has_cudnn):
            raise ValueError("attention backend 'cudnn' needs a CUDA device with cuDNN and bf16/fp16 tensors; "
                             "use 'sdpa' instead")
    if backend == "efficient" and not cuda:
        raise ValueError("attention backend 'efficient' is a CUDA kernel; use 'sdpa' on "
                         f"{device_type}")
    return backend


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Unmasked attention. q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D]."""
    kernel = resolve_backend(backend, q.device.type, q.dtype)
    if kernel == "flash":
        from flash_attn import flash_attn_func
        return flash_attn_func(q, k, v)
    if kernel in ("cudnn", "efficient"):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        which = SDPBackend.CUDNN_ATTENTION if kernel == "cudnn" else SDPBackend.EFFICIENT_ATTENTION
        with sdpa_kernel(which):
            return _sdpa(q, k, v)
    if kernel == "math":
        scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / q.shape[-1] ** 0.5
        return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.float()).to(q.dtype)
    return _sdpa(q, k, v)


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
