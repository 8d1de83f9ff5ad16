"""Wan2.1 causal 3-D VAE with the official parameter names, and its cached (streaming) encode/decode.

Layouts: the networks work on `[B, C, T, H, W]`; pipeline latents are normalised `[B, F, C, h, w]`,
ComfyUI latents raw `[B, C, F, h, w]`. Pixels are in [-1, 1].

Causality lives in a *feature cache*: a flat `dict[str, Tensor]` keyed by module name, holding the last
`CACHE_FRAMES` input frames of every temporal conv (and one frame per temporal downsampler). Feeding a
video through the networks piece by piece with one cache gives the same result as feeding it at once,
except for the first frame, which the official code treats specially and which must come alone:

* encoder: frame 0 alone → 1 latent, then every 4 frames → 1 latent (`T' = 1 + (T-1)/4`);
* decoder: latent 0 alone → 1 frame (the temporal upsamplers are skipped), then each latent → 4 frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sf_core.weights.files import WeightsError, check_state_dict, read_state_dict

CACHE_FRAMES = 2

LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

FeatureCache = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------
# Latent normalisation (the DiT works on normalised latents, ComfyUI's LATENT is raw)
# ---------------------------------------------------------------------------------------------------

def _stats(z: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std (float32, as the official code keeps them) shaped to broadcast over `z`."""
    if z.shape[channel_dim] != len(LATENT_MEAN):
        raise ValueError(f"latent has {z.shape[channel_dim]} channels at dim {channel_dim} "
                         f"(shape {tuple(z.shape)}); the Wan2.1 statistics need {len(LATENT_MEAN)}")
    shape = [1] * z.ndim
    shape[channel_dim] = len(LATENT_MEAN)
    mean = torch.tensor(LATENT_MEAN, dtype=torch.float32, device=z.device).view(shape)
    inv_std = 1.0 / torch.tensor(LATENT_STD, dtype=torch.float32, device=z.device).view(shape)
    return mean, inv_std


def normalize(z: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Raw VAE latent → model space: `(z - mean) * (1/std)`, computed in float32."""
    mean, inv_std = _stats(z, channel_dim)
    return ((z.float() - mean) * inv_std).to(z.dtype)


def denormalize(z: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Model-space latent → raw VAE latent: `z / (1/std) + mean`, computed in float32."""
    mean, inv_std = _stats(z, channel_dim)
    return (z.float() / inv_std + mean).to(z.dtype)


def comfy_to_pipeline(raw: torch.Tensor) -> torch.Tensor:
    """ComfyUI raw `[B, C, F, h, w]` → pipeline normalised `[B, F, C, h, w]`."""
    return normalize(raw, channel_dim=1).permute(0, 2, 1, 3, 4).contiguous()


def pipeline_to_comfy(latents: torch.Tensor) -> torch.Tensor:
    """Pipeline normalised `[B, F, C, h, w]` → ComfyUI raw `[B, C, F, h, w]`."""
    return denormalize(latents, channel_dim=2).permute(0, 2, 1, 3, 4).contiguous()


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VAEConfig:
    """Shape of a Wan2.1 VAE. Defaults are the released `Wan2.1_VAE.pth`."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)

    @property
    def time_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def space_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


class CausalConv3d(nn.Conv3d):
    """3-D conv padded only on the past side in time; with a cache, the past comes from earlier calls."""

    cache_key = ""

    def __init__(self, in_ch: int, out_ch: int, kernel, stride=1, padding=0):
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_ch, out_ch, (kt, kh, kw), stride=stride, padding=(0, ph, pw))
        self.past_frames = 2 * pt

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        # x: [B, C, T, H, W]
        if self.past_frames == 0:
            return super().forward(x)
        past = cache.get(self.cache_key) if cache is not None else None
        parts = [x] if past is None else [past.to(x.dtype), x]
        missing = self.past_frames - (0 if past is None else past.shape[2])
        if missing > 0:
            parts.insert(0, x.new_zeros(x.shape[0], x.shape[1], missing, *x.shape[3:]))
        x = torch.cat(parts, dim=2)
        if cache is not None:
            cache[self.cache_key] = x[:, :, -CACHE_FRAMES:].clone()
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learned gain (no bias in Wan2.1)."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of `[B, C, T, H, W]`."""
    b, _, t = x.shape[:3]
    y = fn(x.transpose(1, 2).flatten(0, 1))  # [B*T, C', H', W']
    return y.unflatten(0, (b, t)).transpose(1, 2)


class _Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class Resample(nn.Module):
    """Spatial ×2 / ÷2 per frame, optionally with a temporal ×2 / ÷2 (`time_conv`)."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_upsample(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._time_downsample(x, cache)
        return x

    def _time_upsample(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        key = self.time_conv.cache_key
        if key not in cache:  # very first call: no temporal upsampling, later calls see a zero past
            cache[key] = x.new_zeros(x.shape[0], x.shape[1], CACHE_FRAMES, *x.shape[3:])
            return x
        b, c, t, h, w = x.shape
        y = self.time_conv(x, cache).view(b, 2, c, t, h, w)
        return torch.stack((y[:, 0], y[:, 1]), dim=3).reshape(b, c, 2 * t, h, w)  # frames interleaved

    def _time_downsample(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        key = self.time_conv.cache_key
        past = cache.get(key)
        cache[key] = x[:, :, -1:].clone()
        if past is None:  # the first frame passes through alone
            return x
        return self.time_conv(torch.cat([past.to(x.dtype), x], dim=2))


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(0.0), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape  # n = B*T
        qkv = self.to_qkv(self.norm(x)).view(n, 1, 3 * c, h * w).transpose(2, 3)  # [n, 1, hw, 3c]
        q, k, v = qkv.chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)  # [n, 1, hw, c]
        return self.proj(y.squeeze(1).transpose(1, 2).reshape(n, c, h, w))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        return x + _per_frame(self._attend, x)


def _run(blocks, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    for block in blocks:
        x = block(x, cache) if isinstance(block, (CausalConv3d, Resample, ResidualBlock, AttentionBlock)) \
            else block(x)
    return x


class Encoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = nn.Sequential(ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                    ResidualBlock(dims[-1], dims[-1]))
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        return _run([*self.downsamples, *self.middle, *self.head], x, cache)


class Decoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the previous upsampler halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        return _run([*self.middle, *self.upsamples, *self.head], x, cache)


# ---------------------------------------------------------------------------------------------------
# The VAE
# ---------------------------------------------------------------------------------------------------

class WanVAE(nn.Module):
    """Wan2.1 VAE (`encoder`, `conv1`, `conv2`, `decoder`, as in `Wan2.1_VAE.pth`).

    `with_encoder=False` builds a decoder-only model (`conv2` + `decoder`) for decoder-only files.
    """

    def __init__(self, config: VAEConfig = VAEConfig(), with_encoder: bool = True):
        super().__init__()
        self.config = config
        z = config.z_dim
        if with_encoder:
            self.encoder = Encoder3d(config)
            self.conv1 = CausalConv3d(2 * z, 2 * z, 1)
        self.conv2 = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(config)
        for name, module in self.named_modules():
            if isinstance(module, CausalConv3d):
                module.cache_key = name

    @property
    def has_encoder(self) -> bool:
        return hasattr(self, "encoder")

    def cache_keys(self, part: str) -> list[str]:
        """Names of the feature-cache slots of `part` ("encoder" or "decoder")."""
        return [m.cache_key for m in getattr(self, part).modules()
                if isinstance(m, CausalConv3d) and (m.past_frames > 0 or m.stride[0] > 1)]

    # -- cached steps (raw latents, [B, C, T, H, W]) --------------------------------------------------

    def encode_step(self, video: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Pixels `[B, 3, T, H, W]` → raw latent means `[B, z, T', h, w]`, continuing `cache`.

        The first call on an empty cache must pass exactly one frame; later calls 4·k frames.
        """
        if not self.has_encoder:
            raise RuntimeError("this VAE was loaded without encoder weights ('encoder.*' keys); "
                               "load a full Wan2.1_VAE.pth / wan_2.1_vae.safetensors to encode")
        t = video.shape[2]
        first = not any(k.startswith("encoder.") for k in cache)
        if (first and t != 1) or (not first and t % self.config.time_stride):
            expected = "exactly 1 frame" if first else f"a multiple of {self.config.time_stride} frames"
            raise ValueError(f"encode_step got {t} frames; expected {expected} "
                             f"({'first' if first else 'a later'} call on this cache)")
        out = self.conv1(self.encoder(video.to(self.conv1.weight.dtype), cache))  # [B, 2z, T', h, w]
        return out[:, : self.config.z_dim]

    def decode_step(self, z: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Raw latents `[B, z, F, h, w]` → pixels `[B, 3, T, H, W]` in [-1, 1], continuing `cache`.

        On an empty cache `F` must be 1 (→ 1 frame); afterwards any `F` (→ 4·F frames).
        """
        first = not any(k.startswith("decoder.") for k in cache)
        if first and z.shape[2] != 1:
            raise ValueError(f"decode_step got {z.shape[2]} latent frames on an empty cache; "
                             "the first latent frame must be decoded alone")
        x = self.conv2(z.to(self.conv2.weight.dtype))
        return self.decoder(x, cache).clamp(-1.0, 1.0)

    # -- one-shot, official call order -----------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels `[B, 3, T, H, W]` (T = 1 + 4k, [-1, 1]) → raw latents `[B, z, 1 + k, h, w]` (the mean)."""
        t = video.shape[2]
        if (t - 1) % self.config.time_stride:
            raise ValueError(f"encode needs 1 + {self.config.time_stride}·k frames, got {t}")
        cache: FeatureCache = {}
        pieces = [self.encode_step(video[:, :, :1], cache)]
        for s in range(1, t, self.config.time_stride):
            pieces.append(self.encode_step(video[:, :, s: s + self.config.time_stride], cache))
        return torch.cat(pieces, dim=2)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents `[B, z, F, h, w]` → pixels `[B, 3, 1 + 4(F-1), H, W]` in [-1, 1], one latent per call."""
        cache: FeatureCache = {}
        return torch.cat([self.decode_step(z[:, :, i: i + 1], cache) for i in range(z.shape[2])], dim=2)

    # -- pipeline layout: normalised [B, F, C, h, w] and frames [B, T, 3, H, W] -------------------------

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames `[B, T, 3, H, W]` in [-1, 1] → normalised latents `[B, F, C, h, w]`."""
        return comfy_to_pipeline(self.encode(frames.transpose(1, 2)).float())

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `[B, F, C, h, w]` → frames `[B, T, 3, H, W]` in [-1, 1]."""
        return self.decode(pipeline_to_comfy(latents.float())).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------

def infer_vae_config(sd: dict, source: str = "state dict") -> VAEConfig:
    """Read `dim` and `z_dim` off Wan2.1 VAE key shapes; reject other autoencoders with a clear message."""
    if "decoder.22.bias" in sd:
        raise WeightsError(f"{source}: this is a TAEHV tiny autoencoder (key 'decoder.22.bias'); "
                           "load it with sf_core.vae.taehv.load_taehv")
    if "decoder.upsamples.0.upsamples.0.residual.2.weight" in sd:
        raise WeightsError(f"{source}: this is a Wan2.2 (48-channel) VAE; only the Wan2.1 VAE "
                           "(Wan2.1_VAE.pth / wan_2.1_vae.safetensors) is supported")
    if "decoder.conv_in.weight" in sd:
        raise WeightsError(f"{source}: diffusers AutoencoderKLWan key names ('decoder.conv_in.weight') are not "
                           "supported; use the official Wan2.1_VAE.pth or ComfyUI wan_2.1_vae.safetensors")
    for key in ("decoder.head.0.gamma", "conv2.weight"):
        if key not in sd:
            sample = ", ".join(sorted(sd)[:5]) or "<empty>"
            raise WeightsError(f"{source}: not a Wan2.1 VAE: key '{key}' missing (first keys: {sample}); "
                               "expected the official names such as 'decoder.middle.0.residual.0.gamma'")
    return VAEConfig(dim=int(sd["decoder.head.0.gamma"].shape[0]), z_dim=int(sd["conv2.weight"].shape[0]))


def vae_from_state_dict(sd: dict[str, torch.Tensor], source: str = "state dict", device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, config: VAEConfig | None = None) -> WanVAE:
    """Build a `WanVAE` from official-name tensors; without `encoder.*` keys it is decoder-only."""
    cfg = config or infer_vae_config(sd, source)
    vae = WanVAE(cfg, with_encoder=any(k.startswith("encoder.") for k in sd))
    check_state_dict(sd, vae, source, f"a Wan2.1 VAE (dim {cfg.dim})")
    vae.load_state_dict(sd, strict=True)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             config: VAEConfig | None = None) -> WanVAE:
    """Load `Wan2.1_VAE.pth` (torch pickle) or ComfyUI `wan_2.1_vae.safetensors` (same key names)."""
    return vae_from_state_dict(read_state_dict(path), str(path), device, dtype, config)


# ---------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------

class _CachedCoder:
    """Shared state handling of the streaming encoder and decoder: the feature cache of one part."""

    part = ""

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self.cache: FeatureCache = {}

    def reset(self) -> None:
        self.cache = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat copy of the feature cache (keys are module names; empty before the first call)."""
        return {k: v.clone() for k, v in self.cache.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        known = set(self.vae.cache_keys(self.part))
        unknown = sorted(set(state) - known)
        if unknown:
            raise KeyError(f"{self.part} cache state has unknown keys {unknown[:5]}; expected a subset of the "
                           f"{len(known)} slots such as '{sorted(known)[0]}'")
        if state and set(state) != known:
            raise KeyError(f"{self.part} cache state is partial: missing {sorted(known - set(state))[:5]}")
        param = next(self.vae.parameters())
        self.cache = {k: v.to(device=param.device, dtype=param.dtype).clone() for k, v in state.items()}

    def clone(self):
        twin = type(self)(self.vae)
        twin.cache = self.state_dict()
        return twin

    @property
    def started(self) -> bool:
        return bool(self.cache)


class StreamingDecoder(_CachedCoder):
    """Decode a latent stream chunk by chunk; frames equal one-shot `WanVAE.decode` of the whole stream.

    Chunk of f latents → `4f` frames, except the first chunk → `1 + 4(f-1)` (3 → 9, then 12).
    """

    part = "decoder"
    spatial_stride, temporal_stride = 8, 4

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `[B, f, C, h, w]` → frames `[B, T, 3, H, W]` in [-1, 1] (model dtype)."""
        z = pipeline_to_comfy(latents.float())  # [B, C, f, h, w] raw
        pieces = []
        if not self.started:
            pieces.append(self.vae.decode_step(z[:, :, :1], self.cache))
            z = z[:, :, 1:]
        if z.shape[2]:
            pieces.append(self.vae.decode_step(z, self.cache))
        return torch.cat(pieces, dim=2).transpose(1, 2)


class StreamingEncoder(_CachedCoder):
    """Encode a video stream piece by piece (I2V / video-extension prefill).

    The first piece has `1 + 4k` frames (→ 1 + k latents), later pieces `4k` frames (→ k latents).
    """

    part = "encoder"

    @torch.no_grad()
    def encode_chunk(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames `[B, T, 3, H, W]` in [-1, 1] → normalised latents `[B, F, C, h, w]` (float32)."""
        video = frames.transpose(1, 2)  # [B, 3, T, H, W]
        pieces = []
        if not self.started:
            pieces.append(self.vae.encode_step(video[:, :, :1], self.cache))
            video = video[:, :, 1:]
        if video.shape[2]:
            pieces.append(self.vae.encode_step(video, self.cache))
        return comfy_to_pipeline(torch.cat(pieces, dim=2).float())
