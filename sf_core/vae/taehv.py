"""TAEHV-style tiny autoencoder for Wan2.1 latents (`taew2_1` / ComfyUI `lighttaew2_1`), for fast previews.

Per-frame 2-D convs; time enters through `MemBlock`s (each frame also sees its block input one frame
earlier, zeros before the first), `TPool` (stack s frames → 1) and `TGrow` (1 frame → s). Parameter names are
the `nn.Sequential` indices of `encoder` / `decoder`, as in `taew2_1.pth` / `.safetensors`.

Latents are the diffusion model's normalised latents `[B, F, C, h, w]`; pixels here are in [-1, 1]
(the network itself works in [0, 1]). The decoder emits 4 frames per latent and drops the first 3
(`T = 4F - 3`), so a stream of 3-latent chunks gives 9 frames, then 12, like the full Wan VAE.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sf_core.weights.files import WeightsError, check_state_dict, read_state_dict

FRAMES_TO_TRIM = 3  # 2**2 - 1 leading frames of the two ×2 temporal upsamplers

Memory = dict[str, torch.Tensor]


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """`relu(conv(cat[x_t, past_t]) + x_t)` where `past_t` is the block input one frame earlier."""

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(2 * n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TPool(nn.Module):
    """Merge `stride` consecutive frames into one (1×1 conv over the stacked channels)."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n * stride, n, 1, bias=False)


class TGrow(nn.Module):
    """Split each frame into `stride` frames (1×1 conv to `stride·n` channels)."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)


def apply_blocks(blocks: nn.Sequential, x: torch.Tensor, memory: Memory, prefix: str) -> torch.Tensor:
    """Run `blocks` over a clip `[N, T, C, H, W]`, parallel in time, continuing from `memory`.

    `memory[f"{prefix}.{i}"]` holds the last input frame `[N, C, H, W]` of MemBlock `i` and is updated,
    so consecutive calls equal one call on the concatenated clip (T must divide by every TPool stride).
    """
    n = x.shape[0]
    for i, block in enumerate(blocks):
        t = x.shape[1]
        if isinstance(block, MemBlock):
            key = f"{prefix}.{i}"
            first = memory.get(key)
            first = x.new_zeros(x[:, :1].shape) if first is None else first.unsqueeze(1).to(x.dtype)
            past = torch.cat([first, x[:, :-1]], dim=1)
            memory[key] = x[:, -1].clone()
            x = block(x.flatten(0, 1), past.flatten(0, 1)).unflatten(0, (n, t))
        elif isinstance(block, TPool):
            if t % block.stride:
                raise ValueError(f"{prefix}.{i}: TPool needs a multiple of {block.stride} frames, got {t}")
            x = block.conv(x.reshape(n * t // block.stride, block.stride * x.shape[2], *x.shape[3:]))
            x = x.unflatten(0, (n, t // block.stride))
        elif isinstance(block, TGrow):
            c = x.shape[2]
            x = block.conv(x.flatten(0, 1)).reshape(n, t * block.stride, c, *x.shape[3:])
        else:
            x = block(x.flatten(0, 1)).unflatten(0, (n, t))
    return x


class TAEHV(nn.Module):
    """Tiny video autoencoder with the `taew2_1` module tree (widths configurable for tests)."""

    def __init__(self, latent_channels: int = 16, widths: tuple[int, int, int, int] = (256, 128, 64, 64),
                 encoder_width: int = 64, with_encoder: bool = True):
        super().__init__()
        self.latent_channels = latent_channels
        if with_encoder:
            e = encoder_width
            self.encoder = nn.Sequential(
                _conv(3, e), nn.ReLU(),
                TPool(e, 2), _conv(e, e, stride=2, bias=False), MemBlock(e), MemBlock(e), MemBlock(e),
                TPool(e, 2), _conv(e, e, stride=2, bias=False), MemBlock(e), MemBlock(e), MemBlock(e),
                TPool(e, 1), _conv(e, e, stride=2, bias=False), MemBlock(e), MemBlock(e), MemBlock(e),
                _conv(e, latent_channels),
            )
        w = widths
        self.decoder = nn.Sequential(
            Clamp(), _conv(latent_channels, w[0]), nn.ReLU(),
            MemBlock(w[0]), MemBlock(w[0]), MemBlock(w[0]), nn.Upsample(scale_factor=2), TGrow(w[0], 1),
            _conv(w[0], w[1], bias=False),
            MemBlock(w[1]), MemBlock(w[1]), MemBlock(w[1]), nn.Upsample(scale_factor=2), TGrow(w[1], 2),
            _conv(w[1], w[2], bias=False),
            MemBlock(w[2]), MemBlock(w[2]), MemBlock(w[2]), nn.Upsample(scale_factor=2), TGrow(w[2], 2),
            _conv(w[2], w[3], bias=False),
            nn.ReLU(), _conv(w[3], 3),
        )

    @property
    def has_encoder(self) -> bool:
        return hasattr(self, "encoder")

    def memory_keys(self) -> list[str]:
        """Names of the decoder's memory slots (one per MemBlock)."""
        return [f"decoder.{i}" for i, b in enumerate(self.decoder) if isinstance(b, MemBlock)]

    def decode_step(self, latents: torch.Tensor, memory: Memory) -> torch.Tensor:
        """Latents `[B, f, C, h, w]` → `4f` frames `[B, 4f, 3, H, W]` in [0, 1] (untrimmed), continuing `memory`."""
        dtype = self.decoder[1].weight.dtype
        return apply_blocks(self.decoder, latents.to(dtype), memory, "decoder").clamp(0.0, 1.0)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `[B, F, C, h, w]` → frames `[B, 4F - 3, 3, H, W]` in [-1, 1]."""
        return self.decode_step(latents, {})[:, FRAMES_TO_TRIM:] * 2 - 1

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames `[B, T, 3, H, W]` in [-1, 1] → latents `[B, ceil(T/4), C, h, w]` (last frame repeated to pad)."""
        if not self.has_encoder:
            raise RuntimeError("this TAEHV was loaded without encoder weights ('encoder.*' keys)")
        pad = -frames.shape[1] % 4
        if pad:
            frames = torch.cat([frames, frames[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
        x = (frames.to(self.encoder[0].weight.dtype) + 1) / 2
        return apply_blocks(self.encoder, x, {}, "encoder")


def infer_taehv_shape(sd: dict, source: str = "state dict") -> dict:
    """Constructor arguments of `TAEHV` read off `taew2_1` key shapes; other variants are rejected."""
    for key in ("decoder.1.weight", "decoder.8.weight", "decoder.14.weight", "decoder.20.weight",
                "decoder.22.weight"):
        if key not in sd:
            sample = ", ".join(sorted(sd)[:5]) or "<empty>"
            raise WeightsError(f"{source}: not a TAEHV/taew2_1 file: key '{key}' missing (first keys: {sample})")
    latent, out = int(sd["decoder.1.weight"].shape[1]), int(sd["decoder.22.weight"].shape[0])
    if latent != 16 or out != 3:
        raise WeightsError(f"{source}: TAEHV with {latent} latent channels and {out} output channels is not the "
                           "Wan2.1 variant (expected 16 and 3, i.e. taew2_1 / lighttaew2_1); taew2_2, taehv1_5 "
                           "and other variants are not supported")
    shape = {"latent_channels": latent,
             "widths": tuple(int(sd[f"decoder.{i}.weight"].shape[0]) for i in (1, 8, 14, 20))}
    if "encoder.0.weight" in sd:
        shape["encoder_width"] = int(sd["encoder.0.weight"].shape[0])
    return shape


def taehv_from_state_dict(sd: dict[str, torch.Tensor], source: str = "state dict",
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TAEHV:
    """Build a `TAEHV` from `taew2_1`-layout tensors; without `encoder.*` keys it is decoder-only."""
    shape = infer_taehv_shape(sd, source)
    model = TAEHV(**shape, with_encoder="encoder_width" in shape)
    check_state_dict(sd, model, source, "a TAEHV tiny decoder")
    model.load_state_dict(sd, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_taehv(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TAEHV:
    """Load `taew2_1.pth` / `taew2_1.safetensors` / ComfyUI `lighttaew2_1.*` (same key layout)."""
    return taehv_from_state_dict(read_state_dict(path), str(path), device, dtype)


class StreamingTAEHVDecoder:
    """Chunk-by-chunk tiny decoding with the same frame counts as the full VAE (3 latents → 9, then 12).

    * `mode="memory"` (default) carries each MemBlock's last input frame between chunks, so the stream
      equals `TAEHV.decode_video` of all latents at once, at the cost of one chunk per chunk.
    * `mode="overlap"` is the Self-Forcing demo's scheme: decode each chunk from scratch together with the
      previous 3 latents as context and drop the context's frames (and the first 3 frames of the stream).
    """

    CONTEXT_LATENTS = 3
    spatial_stride, temporal_stride = 8, 4

    def __init__(self, model: TAEHV, mode: str = "memory"):
        if mode not in ("memory", "overlap"):
            raise ValueError(f"mode must be 'memory' or 'overlap', got {mode!r}")
        self.model = model
        self.mode = mode
        self.state: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.state = {}

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `[B, f, C, h, w]` → frames `[B, T, 3, H, W]` in [-1, 1]."""
        first = not self.state
        if self.mode == "memory":
            frames = self.model.decode_step(latents, self.state)
        else:
            context = self.state.get("context")
            both = latents if context is None else torch.cat([context.to(latents), latents], dim=1)
            frames = self.model.decode_step(both, {})[:, 4 * (both.shape[1] - latents.shape[1]):]
            self.state["context"] = both[:, -self.CONTEXT_LATENTS:].clone()
        return (frames[:, FRAMES_TO_TRIM:] if first else frames) * 2 - 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat copy of the stream state (empty before the first chunk)."""
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        allowed = set(self.model.memory_keys()) if self.mode == "memory" else {"context"}
        unknown = sorted(set(state) - allowed)
        if unknown:
            raise KeyError(f"TAEHV {self.mode} state has unknown keys {unknown[:5]}; expected {sorted(allowed)[:4]}...")
        param = self.model.decoder[1].weight
        self.state = {k: v.to(device=param.device, dtype=param.dtype).clone() for k, v in state.items()}

    def clone(self) -> "StreamingTAEHVDecoder":
        twin = StreamingTAEHVDecoder(self.model, self.mode)
        twin.state = self.state_dict()
        return twin
