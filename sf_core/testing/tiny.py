"""Tiny random-weight models and files in the real layouts, for tests and smoke runs (seconds, no downloads)."""
from __future__ import annotations

import functools
import io
from pathlib import Path

import sentencepiece
import torch
from safetensors.torch import save_file

from sf_core.text.encoder import SCALED_FP8_KEY, SPIECE_KEY, official_to_comfy_key
from sf_core.text.tokenizer import HF_TOKENIZER_SUBDIR, SPIECE_FILE
from sf_core.config import ModelConfig
from sf_core.text.umt5 import UMT5Config, UMT5Encoder

TINY_DIT = ModelConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=32,
                       freq_dim=32, text_len=16)

TINY_UMT5 = UMT5Config(vocab_size=160, dim=32, num_layers=2, num_heads=4, head_dim=8, ffn_dim=48)

_CORPUS = """\
A red fox runs through deep snow under a pale winter sky.
Two children fly a yellow kite on a windy beach at sunset.
The camera slowly pans across a busy night market full of lanterns.
An old sailing ship rocks on grey waves during a storm.
A cat sleeps on a warm windowsill while rain taps the glass.
Close-up of coffee being poured into a white cup, steam rising.
A drone shot over green rice terraces in the early morning mist.
A robot walks down a neon street, reflections shimmering in puddles.
Slow motion: a drop of water falls into a still pond, making ripples.
A dancer spins on an empty stage lit by a single spotlight.
Horses gallop across an open plain, dust trailing behind them!
Fireworks burst over a river city, colours mirrored in the water?
"""


@functools.lru_cache(maxsize=4)
def tiny_spiece_model(vocab_size: int = 128) -> bytes:
    """A small SentencePiece unigram model with umT5's special ids (pad 0, eos 1, unk 2, no bos)."""
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.splitlines() * 4), model_writer=buffer, vocab_size=vocab_size,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    return buffer.getvalue()


def tiny_umt5_state_dict(config: UMT5Config = TINY_UMT5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights under official Wan names, scaled so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UMT5Encoder(config).state_dict().items()}
    state_dict = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key == "norm.weight":
            state_dict[key] = 1.0 + 0.1 * noise
        elif "pos_embedding" in key or key == "token_embedding.weight":
            state_dict[key] = noise
        else:  # Linear [out, in]
            state_dict[key] = noise / shape[1] ** 0.5
    return state_dict


def _quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled e4m3fn: `weight ≈ fp8 * scale`, scale = absmax / 448 (0-dim float32)."""
    scale = (weight.abs().max() / torch.finfo(torch.float8_e4m3fn).max).float()
    return (weight / scale).to(torch.float8_e4m3fn), scale


def make_tiny_umt5(path: str | Path, layout: str = "comfy", config: UMT5Config = TINY_UMT5, seed: int = 0,
                   fp8: bool = False, dtype: torch.dtype = torch.float32, with_tokenizer: bool = True,
                   state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a tiny umT5 text encoder to `path` and return it.

    - `layout="comfy"`: ComfyUI `umt5_xxl_*.safetensors` names with the tokenizer embedded as `spiece_model`;
      `fp8=True` stores every Linear as scaled e4m3fn (`scaled_fp8` marker, `<layer>.scale_weight`).
    - `layout="official"`: Wan `models_t5_umt5-xxl-enc-bf16.pth` names via `torch.save`, tokenizer written to
      `<path's folder>/google/umt5-xxl/spiece.model`.
    Non-quantised tensors are stored in `dtype`. `state_dict` (official names) overrides the random weights.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = state_dict if state_dict is not None else tiny_umt5_state_dict(config, seed)
    spiece = tiny_spiece_model()
    if layout == "official":
        if fp8:
            raise ValueError("the official .pth layout has no fp8 variant")
        torch.save({k: v.to(dtype) for k, v in weights.items()}, path)
        if with_tokenizer:
            folder = path.parent / HF_TOKENIZER_SUBDIR
            folder.mkdir(parents=True, exist_ok=True)
            (folder / SPIECE_FILE).write_bytes(spiece)
        return path
    if layout != "comfy":
        raise ValueError(f"layout must be 'comfy' or 'official', got {layout!r}")
    tensors = {}
    for key, value in weights.items():
        name = official_to_comfy_key(key)
        if fp8 and value.dim() == 2 and key.startswith("blocks.") and "pos_embedding" not in key:
            tensors[name], tensors[name[: -len("weight")] + "scale_weight"] = _quantize_fp8(value)
        else:
            tensors[name] = value.to(dtype).contiguous()
    if fp8:
        tensors[SCALED_FP8_KEY] = torch.empty(0, dtype=torch.float8_e4m3fn)
    if with_tokenizer:
        tensors[SPIECE_KEY] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    save_file(tensors, str(path))
    return path


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere, scaled to keep activations O(1) (a fresh Wan init leaves some zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


# A DiT that fits TINY_UMT5's embeddings and the Wan VAE's 16 latent channels (`python -m sf_core.generate`)
TINY_GENERATE_DIT = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=16, out_dim=16,
                                text_dim=TINY_UMT5.dim, freq_dim=32, text_len=16)


def make_tiny_models_dir(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """A ComfyUI-style models folder under the official file names: tiny DiT (`TINY_GENERATE_DIT`),
    umT5 (tokenizer inside), Wan VAE and TAEHV; returns {"checkpoint", "text_encoder", "vae", "taehv", "root"}."""
    from sf_core.config import StreamConfig
    from sf_core.model import CausalWanModel
    from sf_core.vae.taehv import TAEHV
    from sf_core.vae.wan import VAEConfig, WanVAE
    from sf_core.weights.checkpoint import save_safetensors

    root = Path(root)
    paths = {"checkpoint": root / "diffusion_models" / "self_forcing_dmd.safetensors",
             "text_encoder": root / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
             "vae": root / "vae" / "wan_2.1_vae.safetensors", "taehv": root / "vae_approx" / "taew2_1.safetensors"}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = randomize(CausalWanModel(TINY_GENERATE_DIT, attention="sdpa"), seed)
    save_safetensors(model, paths["checkpoint"], StreamConfig(), TINY_GENERATE_DIT)
    make_tiny_umt5(paths["text_encoder"])
    save_file(WanVAE(VAEConfig(dim=4)).state_dict(), str(paths["vae"]))
    save_file(TAEHV(widths=(8, 8, 8, 8), with_encoder=False).state_dict(), str(paths["taehv"]))
    return {**paths, "root": root}
