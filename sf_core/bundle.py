"""Load everything a generation run needs (DiT, text encoder, chunk decoder), with one-line file errors.

Every problem with a user's file becomes a `FileProblem` whose message names the file, what was found,
what was expected, and the ComfyUI folder such files normally live in.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from .assets import ModelFiles
from .checkpoint import load_model
from .config import StreamConfig
from .decoding import ChunkDecoder
from .model import CausalWanModel
from .schedule import chunk_frame_counts

# role -> (what is expected, where ComfyUI users keep it)
ROLES = {
    "checkpoint": ("a Self-Forcing / causal Wan2.1 DiT checkpoint (e.g. self_forcing_dmd.pt)",
                   "models/diffusion_models"),
    "text_encoder": ("the umT5-XXL text encoder (umt5_xxl_fp8_e4m3fn_scaled.safetensors, umt5_xxl_fp16.safetensors "
                     "or models_t5_umt5-xxl-enc-bf16.pth)", "models/text_encoders"),
    "vae": ("the Wan2.1 VAE (wan_2.1_vae.safetensors or Wan2.1_VAE.pth)", "models/vae"),
    "taehv": ("the TAEHV tiny decoder for Wan2.1 (taew2_1.safetensors / lighttaew2_1.safetensors)", "models/vae_approx"),
}
# What a safetensors file holds, judged by one key: (key suffix, kind, description).
SIGNATURES = (
    ("head.modulation", "checkpoint", "a Wan2.1 DiT"),
    ("condition_embedder.time_proj.weight", "checkpoint", "a diffusers Wan DiT"),
    ("decoder.middle.0.residual.0.gamma", "vae", "a Wan2.1 VAE"),
    ("decoder.upsamples.0.upsamples.0.residual.2.weight", "wan22_vae", "a Wan2.2 VAE"),
    ("decoder.22.bias", "taehv", "a TAEHV tiny decoder"),
    ("shared.weight", "text_encoder", "a umT5/T5 text encoder"),
    ("encoder.final_layer_norm.weight", "text_encoder", "a umT5/T5 text encoder"),
    ("token_embedding.weight", "text_encoder", "the official Wan umT5 text encoder"),
)


class FileProblem(Exception):
    """A user file is missing or wrong; `str()` is the one-line message for the user."""


def problem(role: str, path, found: str) -> FileProblem:
    expected, folder = ROLES[role]
    line = f"{role.replace('_', ' ')} file {path}: {found}; expected {expected} (ComfyUI users keep it in {folder})"
    return FileProblem(" ".join(line.split()))


def sniff(path: Path) -> tuple[str | None, str]:
    """(kind, description) of a safetensors file from its header alone; (None, "") for other formats."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            return None, ""
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # noqa: BLE001 - a damaged header is reported by the real loader
        return None, str(exc)
    for suffix, kind, text in SIGNATURES:
        if any(k == suffix or k.endswith("." + suffix) for k in keys):
            return kind, text
    if any(m in k for k in keys for m in (".lora_down.", ".lora_A.", "lora_unet_")):
        return "lora", "a LoRA"
    return "unknown", f"an unrecognised safetensors file (first keys: {', '.join(sorted(keys)[:3]) or 'none'})"


def check_file(role: str, path) -> None:
    """Fail fast (before loading anything large) on a missing file or a safetensors file of the wrong kind."""
    path = Path(path)
    if not path.exists():
        raise problem(role, path, "not found")
    if path.is_dir() and role != "checkpoint":
        raise problem(role, path, "is a folder")
    if path.is_file() and path.stat().st_size == 0:
        raise problem(role, path, "is empty (0 bytes)")
    if path.is_dir():
        return
    kind, text = sniff(path)
    accepted = {"vae": ("vae", "taehv"), "taehv": ("taehv",)}.get(role, (role,))
    if kind is not None and kind not in accepted:
        raise problem(role, path, f"found {text}")


class PixelDecoder:
    """The toy world's decoder: latents are pixels (space-to-depth ×2), f latents → f frames; stateless."""

    spatial_stride = 2
    latent_channels = 12

    @staticmethod
    def frame_counts(chunk_frames: int) -> tuple[int, int]:
        return chunk_frames, chunk_frames

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        from .toy.render import from_latent
        return from_latent(latents.float()) * 2 - 1  # [B, f, 3, 2h, 2w] in [-1, 1]

    def reset(self) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def clone(self) -> "PixelDecoder":
        return self


def spatial_stride(decoder) -> int:
    return getattr(decoder, "spatial_stride", 8)


def frame_counts(decoder, chunk_frames: int) -> tuple[int, int]:
    """Video frames the decoder gives for a stream's first chunk and for each later chunk of `chunk_frames`
    latent frames: (4n − 3, 4n) for the Wan VAE and TAEHV, (n, n) for the toy pixels."""
    counts = getattr(decoder, "frame_counts", None)
    return counts(chunk_frames) if counts is not None else chunk_frame_counts(chunk_frames)


@dataclass
class Bundle:
    model: CausalWanModel
    stream_config: StreamConfig
    encode: Callable[[list[str]], torch.Tensor]   # prompts -> context [B, L, text_dim]
    decoder: ChunkDecoder


def _load(role: str, path, fn):
    """Run a loader, turning its (already descriptive) errors into one-line FileProblems."""
    try:
        return fn()
    except FileProblem:
        raise
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise problem(role, path, str(exc).replace(str(path) + ": ", "")) from None
    except Exception as exc:  # noqa: BLE001 - e.g. torch's unpickler raises IndexError on garbage bytes
        raise problem(role, path, f"unreadable ({type(exc).__name__}: {exc})") from None


def load_text_encoder(files: ModelFiles, device, dtype: torch.dtype) -> Callable[[list[str]], torch.Tensor]:
    if files.text_kind == "toy":
        from .toy.text import ToyTextEncoder
        encoder = ToyTextEncoder(**files.toy_text)
        return lambda prompts: encoder(prompts, device)
    from .text import TextEncoder
    text_dtype = torch.bfloat16 if dtype == torch.float16 else dtype  # umT5 overflows in fp16
    encoder = _load("text_encoder", files.text_encoder,
                    lambda: TextEncoder.load(files.text_encoder, dtype=text_dtype, device=device))
    return encoder.encode


def load_decoder(files: ModelFiles, device, dtype: torch.dtype) -> ChunkDecoder:
    if files.decoder_kind == "toy_pixels":
        return PixelDecoder()
    from .decoding import load_chunk_decoder
    role = "taehv" if files.decoder_kind == "taehv" else "vae"
    decoder = _load(role, files.decoder, lambda: load_chunk_decoder(files.decoder, device, dtype))
    if files.decoder_kind == "taehv" and not hasattr(decoder, "mode"):
        raise problem("taehv", files.decoder, "found a full Wan2.1 VAE (use --vae for it)")
    return decoder


def load_bundle(files: ModelFiles, device, dtype: torch.dtype, decoder_dtype: torch.dtype,
                stream_config: StreamConfig | None = None) -> Bundle:
    """Check every file first, then load text encoder, DiT and decoder."""
    check_file("checkpoint", files.checkpoint)
    if files.text_kind != "toy":
        check_file("text_encoder", files.text_encoder)
    if files.decoder_kind != "toy_pixels":
        check_file("taehv" if files.decoder_kind == "taehv" else "vae", files.decoder)
    encode = load_text_encoder(files, device, dtype)
    model, stream = _load("checkpoint", files.checkpoint,
                          lambda: load_model(files.checkpoint, dtype=dtype, device=device, stream_config=stream_config))
    decoder = load_decoder(files, device, decoder_dtype)
    return Bundle(model.eval().requires_grad_(False), stream, encode, decoder)
