"""Objects that travel between the Self-Forcing nodes (custom socket types), and their folder helpers.

Nodes never mutate an input handle: ComfyUI reuses cached upstream outputs, so a stream is forked
before it is continued.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from sf_core.config import StreamConfig
from sf_core.model import CausalWanModel
from sf_core.media.timing import decoder_frame_counts
from sf_core.vae.wan import pipeline_to_comfy

from .categories import SAMPLING

MODEL_TYPE = "SF_MODEL"
VAE_TYPE = "SF_VAE"
TEXT_ENCODER_TYPE = "SF_TEXT_ENCODER"
CONTEXT_TYPE = "SF_CONTEXT"
SCHEDULE_TYPE = "SF_SCHEDULE"
STREAM_TYPE = "SF_STREAM"
START_TYPE = "SF_START"

CATEGORY = SAMPLING  # the stream nodes' group; nodes/categories.py has the others
CONTEXT_TOKENS = 512  # the text length every Wan2.1 DiT was trained with


@dataclass
class SFModel:
    model: CausalWanModel
    stream_config: StreamConfig          # defaults from the checkpoint's metadata
    name: str
    device: torch.device                 # where it computes
    patcher: object | None = None        # comfy ModelPatcher: ComfyUI's memory manager places the weights

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype


@dataclass
class SFVAE:
    decoder: object                      # a sf_core.vae.decoders.ChunkDecoder prototype (never run directly)
    name: str
    encoder: object | None = None        # a sf_core.vae.wan.WanVAE with encoder weights (image-to-video), or None
    patcher: object | None = None        # comfy ModelPatcher of the decoder's (and encoder's) weights

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent pixel (8 for the Wan VAE, 2 for the toy pixels)."""
        return getattr(self.decoder, "spatial_stride", 8)

    def frame_counts(self, chunk_frames: int) -> tuple[int, int]:
        """Video frames from a stream's first chunk and from each later chunk."""
        return decoder_frame_counts(self.decoder, chunk_frames)

    def check_model(self, model: CausalWanModel) -> None:
        channels = getattr(self.decoder, "latent_channels", None)
        if channels is not None and channels != model.config.in_dim:
            raise ValueError(f"{self.name!r} decodes {channels}-channel latents but the model makes "
                             f"{model.config.in_dim}-channel ones; use the VAE that belongs to the model")

    def to_comfy_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Pipeline `[B, F, C, h, w]` → ComfyUI raw `[B, C, F, h, w]` (Wan: denormalised; toy pixels as they are)."""
        if not getattr(self.decoder, "normalised_latents", True):
            return latents.permute(0, 2, 1, 3, 4).contiguous()
        return pipeline_to_comfy(latents)

    def fresh_decoder(self, state: dict[str, torch.Tensor] | None = None):
        """An independent decoder, continuing `state` (a `state_dict()` of the same kind of decoder)."""
        decoder = self.decoder.clone()
        decoder.reset()
        if state:
            try:
                decoder.load_state_dict(state)
            except KeyError as error:
                raise ValueError(f"the stream was decoded with a different kind of VAE than {self.name!r} "
                                 f"({error.args[0]}); continue it with the VAE it was started with") from None
        return decoder


@dataclass
class SFPromptEncoder:
    """A text encoder without weights of its own to manage (e.g. the toy encoder): `encode(prompts)` → [B, L, D]."""
    encode: Callable[[list[str]], torch.Tensor]
    name: str = ""
    truncation: Callable[[str], str | None] = lambda prompt: None   # prompt -> note when its end is cut


@dataclass
class SFContext:
    embedding: torch.Tensor              # [B, L, D]
    prompt: str | None = None
    encode: Callable[[str], torch.Tensor] | None = None   # prompt -> [1, L, D], for live / scheduled switches
    note: str | None = None              # e.g. the prompt was cut to the text encoder's length

    def encode_prompt(self, text: str) -> torch.Tensor:
        if self.encode is None:
            raise ValueError("this context cannot encode new prompts: connect it from 'SF Text Encode', or give "
                             "'SF Conditioning To Context' the CLIP it came from")
        return self.encode(text).expand(self.embedding.shape[0], -1, -1)


@dataclass
class SFStart:
    latents: torch.Tensor                # normalised [B, F0, C, h, w]
    height: int
    width: int


@dataclass
class SFSchedule:
    entries: list                        # sf_core.media.timing.ScheduleEntry
    embeddings: dict[str, torch.Tensor]  # prompt -> [B, L, D]
    blend_chunks: int = 0
    recache: bool = False


@dataclass
class SFStream:
    state: object                        # sf_core.state.StreamState (decoder state in extras "vae.*")
    model: SFModel
    vae: SFVAE
    context: SFContext
    config: StreamConfig                 # what this stream runs with (chunk size, steps, cache)
    fps: float
    frames: int = 0                      # pixel frames decoded so far
    info: dict = field(default_factory=dict)


def fit_context(embedding: torch.Tensor, tokens: int = CONTEXT_TOKENS) -> torch.Tensor:
    """Truncate or zero-pad `[B, L, D]` to exactly `tokens` positions."""
    if embedding.dim() != 3:
        raise ValueError(f"text embedding must be [batch, tokens, dim], got {tuple(embedding.shape)}")
    if embedding.shape[1] >= tokens:
        return embedding[:, :tokens]
    return torch.nn.functional.pad(embedding, (0, 0, 0, tokens - embedding.shape[1]))


def decoder_state(extras: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("vae."):]: v for k, v in extras.items() if k.startswith("vae.")}


def store_decoder_state(extras: dict[str, torch.Tensor], decoder) -> None:
    for key in [k for k in extras if k.startswith("vae.")]:
        del extras[key]
    extras.update({"vae." + k: v for k, v in decoder.state_dict().items()})
