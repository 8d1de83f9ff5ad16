"""Load everything a generation run needs (DiT, text encoder, chunk decoder), with one-line file errors.

Every problem with a user's file becomes a `FileProblem` whose message names the file, what was found,
what was expected, and the ComfyUI folder such files normally live in.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from sf_core.generate.files import ModelFiles
from sf_core.weights.checkpoint import load_model
from sf_core.config import StreamConfig
from sf_core.vae.decoders import ChunkDecoder
from sf_core.model import CausalWanModel
from sf_core.weights.files import sniff

# role -> (what is expected, where ComfyUI users keep it)
ROLES = {
    "checkpoint": ("a Self-Forcing / causal Wan2.1 DiT checkpoint (e.g. self_forcing_dmd.pt)",
                   "models/diffusion_models"),
    "text_encoder": ("the umT5-XXL text encoder (umt5_xxl_fp8_e4m3fn_scaled.safetensors, umt5_xxl_fp16.safetensors "
                     "or models_t5_umt5-xxl-enc-bf16.pth)", "models/text_encoders"),
    "vae": ("the Wan2.1 VAE (wan_2.1_vae.safetensors or Wan2.1_VAE.pth)", "models/vae"),
    "taehv": ("the TAEHV tiny decoder for Wan2.1 (taew2_1.safetensors / lighttaew2_1.safetensors)", "models/vae_approx"),
    "toy_autoencoder": ("the toy world's autoencoder (decoder.safetensors, written by sf_core.toy.autoencoder)",
                        "the model bundle folder"),
}
class FileProblem(Exception):
    """A user file is missing or wrong; `str()` is the one-line message for the user."""


def problem(role: str, path, found: str) -> FileProblem:
    expected, folder = ROLES[role]
    line = f"{role.replace('_', ' ')} file {path}: {found}; expected {expected} (ComfyUI users keep it in {folder})"
    return FileProblem(" ".join(line.split()))


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


@dataclass
class Bundle:
    model: CausalWanModel
    stream_config: StreamConfig
    encode: Callable[[list[str]], torch.Tensor]   # prompts -> context [B, L, text_dim]
    decoder: ChunkDecoder
    truncation: Callable[[str], str | None]       # prompt -> note when the encoder cuts its end (text.limits)


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


def _umt5(files: ModelFiles, device, dtype: torch.dtype):
    from sf_core.text.encoder import TextEncoder
    text_dtype = torch.bfloat16 if dtype == torch.float16 else dtype  # umT5 overflows in fp16
    encoder = _load("text_encoder", files.text_encoder,
                    lambda: TextEncoder.load(files.text_encoder, dtype=text_dtype, device=device))
    return encoder.encode, encoder.tokenizer.truncation  # the note needs the tokenizer only


def _toy_text(files: ModelFiles, device, dtype: torch.dtype):
    from sf_core.toy.text import ToyTextEncoder
    encoder = ToyTextEncoder(**files.text_options)
    return (lambda prompts: encoder(prompts, device)), encoder.truncation


def _decoder_file(files: ModelFiles, device, dtype: torch.dtype) -> ChunkDecoder:
    from sf_core.vae.decoders import load_chunk_decoder
    role = "taehv" if files.decoder_kind == "taehv" else "vae"
    decoder = _load(role, files.decoder, lambda: load_chunk_decoder(files.decoder, device, dtype))
    if files.decoder_kind == "taehv" and not hasattr(decoder, "mode"):
        raise problem("taehv", files.decoder, "found a full Wan2.1 VAE (use --vae for it)")
    return decoder


def _toy_pixels(files: ModelFiles, device, dtype: torch.dtype) -> ChunkDecoder:
    from sf_core.toy.pixels import PixelDecoder
    return PixelDecoder()


def _toy_autoencoder(files: ModelFiles, device, dtype: torch.dtype) -> ChunkDecoder:
    from sf_core.toy.autoencoder import ToyAutoencoderDecoder, load_autoencoder
    return ToyAutoencoderDecoder(_load("toy_autoencoder", files.decoder, lambda: load_autoencoder(files.decoder, device)))


def _wan_geometry():
    from sf_core.vae.wan import StreamingDecoder
    return StreamingDecoder


def _toy_geometry():
    from sf_core.toy.pixels import PixelDecoder
    return PixelDecoder


def _toy_autoencoder_geometry():
    from sf_core.toy.autoencoder import ToyAutoencoderDecoder
    return ToyAutoencoderDecoder


# kind -> (file role or None when the component has no file, loader); see sf_core.generate.files
TEXT_ENCODERS = {"umt5": ("text_encoder", _umt5), "toy": (None, _toy_text)}
DECODERS = {"vae": ("vae", _decoder_file, _wan_geometry), "auto": ("vae", _decoder_file, _wan_geometry),
            "taehv": ("taehv", _decoder_file, _wan_geometry), "toy_pixels": (None, _toy_pixels, _toy_geometry),
            "toy_autoencoder": ("toy_autoencoder", _toy_autoencoder, _toy_autoencoder_geometry)}


def decoder_class(files: ModelFiles):
    """The decoder's class, for its `spatial_stride` / `temporal_stride` before anything is loaded."""
    return DECODERS[files.decoder_kind][2]()


def load_bundle(files: ModelFiles, device, dtype: torch.dtype, decoder_dtype: torch.dtype,
                stream_config: StreamConfig | None = None) -> Bundle:
    """Check every file first, then load text encoder, DiT and decoder."""
    text_role, load_text = TEXT_ENCODERS[files.text_kind]
    decoder_role, load_decoder, _ = DECODERS[files.decoder_kind]
    check_file("checkpoint", files.checkpoint)
    if text_role:
        check_file(text_role, files.text_encoder)
    if decoder_role:
        check_file(decoder_role, files.decoder)
    encode, truncation = load_text(files, device, dtype)  # (prompts -> context, prompt -> note or None)
    model, stream = _load("checkpoint", files.checkpoint,
                          lambda: load_model(files.checkpoint, dtype=dtype, device=device, stream_config=stream_config))
    decoder = load_decoder(files, device, decoder_dtype)
    return Bundle(model.eval().requires_grad_(False), stream, encode, decoder, truncation)
