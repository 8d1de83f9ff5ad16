"""The toy world's learned latent space: a small causal video autoencoder with the Wan VAE's geometry.

Spatial stride 8, temporal stride 4, and Wan's causal frame rule: frame 0 is encoded alone (as a group of
four copies of itself), every later latent frame encodes the next four frames, so 1 + 4k frames give
1 + k latents and a stream's chunks of n latents decode to 1 + 4(n − 1), then 4n frames
(:func:`sf_core.media.timing.chunk_frame_counts`) — the real rules, on a toy.

    encoder   group of 4 frames [12, H, W] --space-to-depth 2--> [48, H/2, W/2] --4 convs, 2 strided--> tanh
              -> raw latent [C, H/8, W/8] in (-1, 1); normalised latent = (raw − mean) / std per channel
    decoder   (latent t, latent t − 1) [2C, H/8, W/8] --convs, 2 upsamplings--> [48, H/2, W/2]
              --depth-to-space 2--> 4 frames [4, 3, H, W]

The decoder's only memory is the previous latent frame (zeros before the first), so streamed decoding
equals one-shot decoding exactly. It is trained on the toy renderer's frames (L1 + MSE + L1 of the image
gradients; optionally weighted up near object outlines, `outline_weight`, so that the latents spend more of
their variance on the objects than on the backgrounds; optionally, `shape_code`, with raw channels 0..2 tied to
each latent cell's circle / square / triangle coverage, `motion_code`, with channels 3..5 tied to its motion
in x, y and size, and `object_code`, with channels 6..8 tied to its coverage by the prompt's objects 1, 2 and 3,
so that shape, motion and which object a cell shows are as plain in the latents as colour) with
Gaussian noise on the raw latents, which makes it forgiving of the DiT's small latent errors,
optionally on 32 × 32 crops (a quarter of the cost a step; GroupNorm then sees crop statistics, so a short
:func:`finetune_decoder` on whole frames follows, which restores colour accuracy). :func:`finetune_decoder`
refines the decoder alone (or trains a wider, deeper one, :func:`with_new_decoder`) without moving the latent
space. At the size the embedded default ships (~15 CPU minutes) it still softens outlines (docs/reproduction.md).
Weights and config: one safetensors file (:func:`save_autoencoder`).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sf_core.weights.checkpoint import write_safetensors_atomic
from sf_core.weights.files import WeightsError, check_state_dict, read_safetensors

from .render import CODES, render_with_codes
from .world import sample_scenes

SPATIAL_STRIDE, TEMPORAL_STRIDE = 8, 4
FORMAT = "sf_toy_autoencoder"
CODE_CHANNELS = {"shape_code": slice(0, 3), "motion_code": slice(3, 6), "object_code": slice(6, 9)}  # raw channels


@dataclass(frozen=True)
class AutoencoderConfig:
    latent_channels: int = 16
    width: int = 64                  # encoder channels: width at H/2 and H/4, 2 × width at H/8
    latent_noise: float = 0.05       # std of the training noise on the raw latents
    decoder_width: int | None = None  # decoder channels: 2 × it at H/8, it at H/4 and H/2 (None: width)
    decoder_depth: int = 1            # conv blocks at H/4 and at H/2 (more place outlines more precisely)
    outline_weight: float = 0.0       # training loss weighted 1 + this within 1 px of the objects' outlines
    shape_code: float = 0.0           # > 0: weight of a loss tying raw latent channels 0..2 to shape coverage
    motion_code: float = 0.0          # > 0: weight of a loss tying raw latent channels 3..5 to motion
    object_code: float = 0.0          # > 0: weight of a loss tying raw latent channels 6..8 to objects 1..3

    def __post_init__(self):
        if self.latent_channels < 1:
            raise ValueError(f"toy autoencoder: latent_channels {self.latent_channels}; expected >= 1")
        for name, c in CODE_CHANNELS.items():
            if getattr(self, name) and self.latent_channels < c.stop:
                raise ValueError(f"toy autoencoder: {name} > 0 ties latent channels {c.start}..{c.stop - 1} to "
                                 f"{', '.join(CODES[c])}, so needs latent_channels >= {c.stop}; got "
                                 f"{self.latent_channels}")

    def code_weights(self) -> dict[str, float]:
        """The codes this autoencoder's loss ties to latent channels (:data:`CODE_CHANNELS`), with their weights."""
        return {name: getattr(self, name) for name in CODE_CHANNELS if getattr(self, name)}


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2 if stride == 1 else 1)


def _block(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    """conv -> GroupNorm(8) -> SiLU (without the norm this net's loss stalled at ~2.5× the normed one's)."""
    return nn.Sequential(_conv(cin, cout, k, stride), nn.GroupNorm(8, cout), nn.SiLU())


class ToyAutoencoder(nn.Module):
    """Encoder and decoder of the toy latent space; see the module docstring for shapes."""

    def __init__(self, config: AutoencoderConfig = AutoencoderConfig()):
        super().__init__()
        self.config = config
        c, w = config.latent_channels, config.width
        self.encoder = nn.Sequential(
            _block(48, w), _block(w, w, 4, 2), _block(w, 2 * w, 4, 2), _block(2 * w, 2 * w), _conv(2 * w, c, 1))
        self.decoder = self.build_decoder(config)
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))

    @staticmethod
    def build_decoder(config: AutoencoderConfig) -> nn.Sequential:
        """(latent t, latent t − 1) [2C, h, w] -> [48, 4h, 4w] (space-to-depth 2 of four frames)."""
        c, w, depth = config.latent_channels, config.decoder_width or config.width, config.decoder_depth
        return nn.Sequential(
            _block(2 * c, 2 * w), _block(2 * w, 2 * w), nn.Upsample(scale_factor=2), _block(2 * w, w),
            *[_block(w, w) for _ in range(depth - 1)], nn.Upsample(scale_factor=2),
            *[_block(w, w) for _ in range(depth)], _conv(w, 48))

    # -- encoder ---------------------------------------------------------------------------------------------
    def encode_groups(self, groups: torch.Tensor) -> torch.Tensor:
        """Raw latents of frame groups: [N, 4, 3, H, W] in [-1, 1] -> [N, C, H/8, W/8] in (-1, 1)."""
        n, _, _, h, w = groups.shape
        x = F.pixel_unshuffle(groups.reshape(n, 12, h, w), 2)
        return torch.tanh(self.encoder(x))

    def encode_raw(self, frames: torch.Tensor, first: bool = True) -> torch.Tensor:
        """Raw latents of [B, T, 3, H, W] in [-1, 1]: T = 1 + 4k -> [B, 1 + k, C, h, w] when `first` (frame 0
        alone: a group of four copies of itself), T = 4k -> [B, k, C, h, w] for a continuation."""
        b, t = frames.shape[:2]
        if first:
            frames = torch.cat([frames[:, :1].expand(-1, TEMPORAL_STRIDE - 1, -1, -1, -1), frames], 1)
        if frames.shape[1] % TEMPORAL_STRIDE:
            expected = "1 + 4k" if first else "a multiple of 4"
            raise ValueError(f"toy autoencoder: {t} frames to encode, expected {expected}")
        raw = self.encode_groups(frames.reshape(-1, TEMPORAL_STRIDE, *frames.shape[2:]))
        return raw.reshape(b, -1, *raw.shape[1:])

    def encode(self, frames: torch.Tensor, first: bool = True) -> torch.Tensor:
        """Normalised latents (:meth:`encode_raw`, then per-channel normalisation)."""
        return self.normalise(self.encode_raw(frames, first))

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.latent_mean.view(-1, 1, 1)) / self.latent_std.view(-1, 1, 1)

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float() * self.latent_std.view(-1, 1, 1) + self.latent_mean.view(-1, 1, 1)

    # -- decoder ---------------------------------------------------------------------------------------------
    def decode_raw(self, raw: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] raw latents and their predecessors -> [N, 4, 3, 8h, 8w] (not clamped)."""
        x = F.pixel_shuffle(self.decoder(torch.cat([raw, previous], 1)), 2)   # [N, 12, 8h, 8w]
        return x.reshape(x.shape[0], TEMPORAL_STRIDE, 3, *x.shape[-2:])

    def decode_sequence(self, raw: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Raw [B, F, C, h, w] -> all 4F frames [B, 4F, 3, 8h, 8w], not clamped; `previous` = the raw latent
        before `raw[:, 0]` ([B, C, h, w]), None (zeros) at the start of a stream."""
        b, f, c, h, w = raw.shape
        start = raw.new_zeros(b, 1, c, h, w) if previous is None else previous.to(raw.dtype).unsqueeze(1)
        before = torch.cat([start, raw[:, :-1]], 1)
        out = self.decode_raw(raw.reshape(-1, c, h, w), before.reshape(-1, c, h, w))
        return out.reshape(b, f * TEMPORAL_STRIDE, *out.shape[2:])

    def decode(self, latents: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised [B, F, C, h, w] -> frames [B, T, 3, 8h, 8w] in [-1, 1]; T = 4F − 3 at the start of a
        stream (`previous` None: frame 0's group gives one frame), else 4F."""
        out = self.decode_sequence(self.denormalise(latents), previous).clamp(-1, 1)
        return out[:, TEMPORAL_STRIDE - 1:] if previous is None else out

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())


class ToyAutoencoderDecoder:
    """The `ChunkDecoder` of the toy latent space: streams normalised latent chunks to frames in [-1, 1].

    State: the last raw latent frame `[B, C, h, w]` (None before the first chunk) — streamed == one-shot.
    """

    spatial_stride, temporal_stride = SPATIAL_STRIDE, TEMPORAL_STRIDE
    normalised_latents = False   # ComfyUI LATENTs carry them as they are (the Wan statistics do not apply)

    def __init__(self, model: ToyAutoencoder):
        self.model = model.eval().requires_grad_(False)
        self.latent_channels = model.config.latent_channels
        self.previous: torch.Tensor | None = None

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.model.latent_mean.device)
        frames = self.model.decode(latents, self.previous)
        self.previous = self.model.denormalise(latents[:, -1])
        return frames

    def reset(self) -> None:
        self.previous = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.previous is None else {"previous": self.previous.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        prev = state.get("previous")
        self.previous = None if prev is None else prev.to(self.model.latent_mean.device, torch.float32).clone()

    def clone(self) -> "ToyAutoencoderDecoder":
        twin = ToyAutoencoderDecoder(self.model)
        twin.load_state_dict(self.state_dict())
        return twin


class ToyAutoencoderEncoder:
    """The `ChunkEncoder` twin: 1 + 4(n − 1) frames first, then 4n per chunk -> normalised latents."""

    spatial_stride, temporal_stride = SPATIAL_STRIDE, TEMPORAL_STRIDE

    def __init__(self, model: ToyAutoencoder):
        self.model = model
        self.started = False

    @torch.no_grad()
    def encode_chunk(self, frames: torch.Tensor) -> torch.Tensor:
        device = self.model.latent_mean.device
        out = self.model.encode(frames.to(device, torch.float32), first=not self.started)
        self.started = True
        return out

    def reset(self) -> None:
        self.started = False


# -- files -------------------------------------------------------------------------------------------------------
def save_autoencoder(model: ToyAutoencoder, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Weights (in `dtype`; the normalisation in float32) + config as safetensors metadata."""
    sd = {k: (v.float() if k.startswith("latent_") else v.to(dtype)).contiguous().cpu()
          for k, v in model.state_dict().items()}
    write_safetensors_atomic(sd, path, {"sf_format": FORMAT, "config": json.dumps(asdict(model.config))})
    return Path(path)


def load_autoencoder(path: str | Path, device: torch.device | str = "cpu") -> ToyAutoencoder:
    """A file written by :func:`save_autoencoder`, in float32, with one-line errors for other files."""
    sd, meta = read_safetensors(path)
    if meta.get("sf_format") != FORMAT:
        raise WeightsError(f"{path}: not a toy autoencoder (metadata sf_format {meta.get('sf_format')!r}, "
                           f"expected {FORMAT!r}); write it with sf_core.toy.autoencoder.save_autoencoder")
    model = ToyAutoencoder(AutoencoderConfig(**json.loads(meta["config"])))
    check_state_dict(sd, model, str(path), "the toy autoencoder")
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model.to(device).eval().requires_grad_(False)


# -- training ----------------------------------------------------------------------------------------------------
def training_clips(batch: int, seed: int, step: int, height: int, width: int,
                   frames: int = 1 + 2 * TEMPORAL_STRIDE, crop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of the seeded scene stream at a step-dependent start frame -> [B, frames, 3, H, W] in [-1, 1], and
    what each pixel shows (shape, motion and object, :func:`~sf_core.toy.render.render_with_codes`,
    [B, frames, 9, H, W]);
    with `crop`, one step-dependent crop × crop window of both on the latent grid ([..., crop, crop]: the nets
    are convolutional, and a 32-pixel crop of 64-pixel frames costs a quarter of a full frame)."""
    scenes = sample_scenes(batch, seed, step * batch)
    start = (step * 7919) % 4096
    clips, codes = render_with_codes(scenes, frames, start_frame=start, height=height, width=width)
    clips = clips * 2 - 1
    if crop is None or crop >= min(height, width):
        return clips, codes
    if crop % SPATIAL_STRIDE:
        raise ValueError(f"toy autoencoder: crop {crop} is not a multiple of the spatial stride {SPATIAL_STRIDE}")
    rows, cols = (height - crop) // SPATIAL_STRIDE + 1, (width - crop) // SPATIAL_STRIDE + 1
    y, x = divmod((step * 7919) % (rows * cols), cols)   # 7919 is prime: every window in turn
    y, x = y * SPATIAL_STRIDE, x * SPATIAL_STRIDE
    return clips[..., y:y + crop, x:x + crop], codes[..., y:y + crop, x:x + crop]


def outline_mask(frames: torch.Tensor) -> torch.Tensor:
    """1 within one pixel of a colour edge of [..., 3, H, W] frames, else 0 -> [..., 1, H, W]. The toy
    backgrounds are flat or smooth vertical gradients (< 0.01 a row at 64 px), so the edges are the objects'
    outlines: where a circle, a square and a triangle of one area differ."""
    lead, (h, w) = frames.shape[:-3], frames.shape[-2:]
    x = frames.reshape(-1, 3, h, w)
    dx = F.pad((x[..., 1:] - x[..., :-1]).abs().amax(1, keepdim=True), (0, 1, 0, 0))
    dy = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True), (0, 0, 0, 1))
    edges = ((dx + dy) > 0.05).float()
    return F.max_pool2d(edges, 3, 1, 1).reshape(*lead, 1, h, w)


def code_target(codes: torch.Tensor) -> torch.Tensor:
    """What raw latent channels 0..8 say under `shape_code`, `motion_code` and `object_code`: the mean over
    each latent cell (its 8 × 8 pixels and its group of frames, frame 0 alone) of the visible coverage of circle
    / square / triangle, of the visible motion in x, y and size and of the visible coverage of objects 1..3
    (:data:`~sf_core.toy.render.CODES`), × 0.9 (inside tanh's range): [B, 1 + 4k, 9, H, W] -> [B, 1 + k, 9,
    H/8, W/8], shape and object in [0, 0.9], motion in [-0.9, 0.9]."""
    b, _, s, h, w = codes.shape
    groups = torch.cat([codes[:, :1].expand(-1, TEMPORAL_STRIDE - 1, -1, -1, -1), codes], 1)
    groups = groups.reshape(b, -1, TEMPORAL_STRIDE, s, h, w).mean(2)                 # [B, 1 + k, 9, H, W]
    cells = F.avg_pool2d(groups.flatten(0, 1), SPATIAL_STRIDE)
    return 0.9 * cells.reshape(b, -1, s, h // SPATIAL_STRIDE, w // SPATIAL_STRIDE)


def reconstruction_loss(model: ToyAutoencoder, clips: torch.Tensor, noise: float, gen: torch.Generator | None,
                        frozen_encoder: bool = False, codes: torch.Tensor | None = None):
    """L1 + MSE + L1 of the image gradients, of clips [B, 1 + 4k, 3, H, W] through encode -> (noisy raw
    latents) -> decode, on all 4 (1 + k) frames (frame 0's group of four copies included); L1 and MSE
    weighted 1 + `outline_weight` near outlines (:func:`outline_mask`; weights normalised to mean 1); plus
    `shape_code` × the MSE of raw channels 0..2, `motion_code` × that of channels 3..5 and `object_code` × that
    of channels 6..8 against :func:`code_target` of `codes` (:func:`training_clips`), so that the latents name
    each cell's shape, motion and object as plainly as its colour."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_encoder):
        raw = model.encode_raw(clips)                                        # [B, 1 + k, C, h, w]
    code, weights = 0.0, model.config.code_weights()
    if weights and not frozen_encoder:
        if codes is None:
            raise ValueError(f"toy autoencoder: {' / '.join(weights)} > 0 needs the clips' codes (training_clips)")
        target = code_target(codes)
        for name, w in weights.items():
            c = CODE_CHANNELS[name]
            code = code + w * F.mse_loss(raw[:, :, c], target[:, :, c])
    if noise > 0:
        raw = raw + noise * torch.randn(raw.shape, generator=gen, device=raw.device)
    out = model.decode_sequence(raw)
    target = torch.cat([clips[:, :1].expand(-1, TEMPORAL_STRIDE - 1, -1, -1, -1), clips], 1)
    err = out - target
    weight = 1.0
    if model.config.outline_weight:
        weight = 1 + model.config.outline_weight * outline_mask(target)
        weight = weight / weight.mean()
    edges = (out.diff(dim=-1) - target.diff(dim=-1)).abs().mean() + (out.diff(dim=-2) - target.diff(dim=-2)).abs().mean()
    return (weight * err.abs()).mean() + (weight * err ** 2).mean() + edges + code   # edges keep outlines sharp


def _fit(model: ToyAutoencoder, params, steps: int, clip_seed: int, noise: float, lr: float,
         gen: torch.Generator, name: str, batch: int, height: int, width: int, device, log,
         frozen_encoder: bool = False, crop: int | None = None) -> None:
    """AdamW with warm-up + cosine decay over `steps` batches of fresh clips of the stream `clip_seed`."""
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    params = [p for group in opt.param_groups for p in group["params"]]
    began = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        clips, codes = training_clips(batch, clip_seed, step, height, width, crop=crop)
        loss = reconstruction_loss(model, clips.to(device), noise, gen, frozen_encoder, codes.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log(f"{name} step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - began:.0f} s)")


def train_autoencoder(steps: int, batch: int = 16, height: int = 64, width: int = 64, seed: int = 0,
                      config: AutoencoderConfig = AutoencoderConfig(), lr: float = 3e-3,
                      log: Callable[[str], None] = print, device: torch.device | str = "cpu",
                      crop: int | None = None) -> ToyAutoencoder:
    """Train on rendered clips of the scene stream `seed` (`crop`: on crops of them, :func:`training_clips`),
    then set the per-channel latent normalisation on whole frames."""
    torch.manual_seed(seed)
    model = ToyAutoencoder(config).to(device).train()
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    _fit(model, model.parameters(), steps, seed, config.latent_noise, lr, gen, "autoencoder", batch, height,
         width, device, log, crop=crop)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        clips = torch.cat([training_clips(batch, seed + 1, i, height, width)[0] for i in range(8)]).to(device)
        raw = model.encode_raw(clips[:, 1:], first=False).flatten(0, 1)   # [N, C, h, w]
        model.latent_mean.copy_(raw.mean((0, 2, 3)))
        model.latent_std.copy_(raw.std((0, 2, 3)).clamp(min=1e-3))
    return model


def with_new_decoder(model: ToyAutoencoder, width: int, depth: int, seed: int = 0) -> ToyAutoencoder:
    """A copy of `model` with the same encoder and normalisation (the same latent space) and a freshly
    initialised decoder of `width` × `depth` (:class:`AutoencoderConfig`), to be trained by :func:`finetune_decoder`."""
    torch.manual_seed(seed)
    twin = ToyAutoencoder(replace(model.config, decoder_width=width, decoder_depth=depth))
    twin.encoder.load_state_dict(model.encoder.state_dict())
    twin.latent_mean.copy_(model.latent_mean)
    twin.latent_std.copy_(model.latent_std)
    return twin.to(model.latent_mean.device)


def finetune_decoder(model: ToyAutoencoder, steps: int, batch: int = 8, height: int = 64, width: int = 64,
                     seed: int = 0, noise: float = 0.03, lr: float = 1e-3, log: Callable[[str], None] = print,
                     device: torch.device | str = "cpu") -> ToyAutoencoder:
    """Train the decoder alone on the frozen encoder's latents. The latent space does not move, so a DiT
    trained on it stays valid: the decoder can be refined (sharper outlines) after the video model."""
    model = model.to(device).train()
    model.encoder.requires_grad_(False)
    model.decoder.requires_grad_(True)
    gen = torch.Generator(device=device).manual_seed(seed + 2)
    _fit(model, model.decoder.parameters(), steps, seed + 3, noise, lr, gen, "decoder", batch, height, width,
         device, log, frozen_encoder=True)   # fresh clips (seed + 3), not the first phase's
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m sf_core.toy.autoencoder",
                                 description="refine or replace the decoder of a toy autoencoder file (encoder frozen: "
                                             "the latent space, and a DiT trained on it, stay valid)")
    ap.add_argument("file", type=Path, help="an autoencoder .safetensors (rewritten in place unless --out)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--noise", type=float, default=0.03, help="std of the noise on the raw latents")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--new-decoder", type=int, nargs=2, default=None, metavar=("WIDTH", "DEPTH"),
                    help="train a fresh decoder of this width and depth instead of refining the file's")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model = load_autoencoder(args.file)
    if args.new_decoder is not None:
        model = with_new_decoder(model, *args.new_decoder, seed=args.seed)
    model = finetune_decoder(model, args.steps, seed=args.seed, noise=args.noise, lr=args.lr,
                             log=lambda m: print(m, flush=True))
    save_autoencoder(model, args.out or args.file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
