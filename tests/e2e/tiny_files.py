"""Tiny random checkpoints in the real file formats, under the real Wan asset names, for the e2e server.

- `self_forcing_dmd.pt`: official Self-Forcing layout (`generator_ema` dict, `model.` prefix, no metadata);
- `self_forcing_dmd.safetensors`: our safetensors with `sf_model` / `sf_stream` metadata;
- `umt5_xxl_fp8_e4m3fn_scaled.safetensors`: ComfyUI umT5 layout, scaled fp8, tokenizer embedded;
- `wan_2.1_vae.safetensors`: Wan2.1 VAE names (ComfyUI's VAELoader detects it as Wan 2.1 too);
- `taew2_1.safetensors` (vae_approx): TAEHV layout.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from sf_core.weights.checkpoint import save_safetensors
from sf_core.config import ModelConfig, StreamConfig
from sf_core.model import CausalWanModel
from sf_core.vae.taehv import TAEHV
from sf_core.testing.tiny import TINY_UMT5, make_tiny_umt5
from sf_core.vae.wan import VAEConfig, WanVAE

DIT_NAME = "self_forcing_dmd.pt"
DIT_SAFETENSORS = "self_forcing_dmd.safetensors"
TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE = "wan_2.1_vae.safetensors"
TINY_DECODER = "taew2_1.safetensors"
LORA = "wan21_sf_lora.safetensors"                       # trained-format adapters (sf_core.train export --lora)
LORA_MERGED = "self_forcing_dmd_lora_merged.safetensors"  # the same LoRA merged by the training export

# dim 128 = one Wan head of 128, so the config is inferable from shapes (the official .pt has no metadata).
TINY_DIT = ModelConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_dim=TINY_UMT5.dim, freq_dim=64)
TINY_STREAM = StreamConfig(chunk_frames=3, window=9, sink=3)


def tiny_dit(seed: int = 0) -> CausalWanModel:
    gen = torch.Generator().manual_seed(seed)
    model = CausalWanModel(TINY_DIT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def tiny_vae(seed: int = 0) -> WanVAE:
    torch.manual_seed(seed)
    vae = WanVAE(VAEConfig(dim=8))
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("gamma") else p.mul_(1.5)
    return vae.eval()


def tiny_taehv(seed: int = 0) -> TAEHV:
    torch.manual_seed(seed)
    return TAEHV(widths=(16, 16, 8, 8), encoder_width=8).eval()


def write_tiny_models(models: Path) -> dict[str, Path]:
    """Write every tiny asset under `models/<folder>/` and return {name: path}."""
    paths = {
        DIT_NAME: models / "diffusion_models" / DIT_NAME,
        DIT_SAFETENSORS: models / "diffusion_models" / DIT_SAFETENSORS,
        TEXT_ENCODER: models / "text_encoders" / TEXT_ENCODER,
        VAE: models / "vae" / VAE,
        TINY_DECODER: models / "vae_approx" / TINY_DECODER,
        LORA: models / "loras" / LORA,
        LORA_MERGED: models / "diffusion_models" / LORA_MERGED,
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    dit = tiny_dit()
    torch.save({"generator_ema": {f"model.{k}": v for k, v in dit.state_dict().items()}}, paths[DIT_NAME])
    save_safetensors(dit, paths[DIT_SAFETENSORS], TINY_STREAM, TINY_DIT)
    make_tiny_umt5(paths[TEXT_ENCODER], layout="comfy", fp8=True)
    save_file({k: v.contiguous() for k, v in tiny_vae().state_dict().items()}, str(paths[VAE]))
    save_file({k: v.contiguous() for k, v in tiny_taehv().state_dict().items()}, str(paths[TINY_DECODER]))
    write_tiny_lora(paths[LORA], paths[LORA_MERGED])
    return paths


def write_tiny_lora(lora_path: Path, merged_path: Path) -> None:
    """Adapters on the tiny DiT through the training code (inject, export adapters only / merged weights)."""
    from sf_core.train.lora import export_lora, inject_lora, merge_lora_state_dict
    model = tiny_dit()
    inject_lora(model, rank=4, alpha=4.0, targets=("self_attn.q", "cross_attn.k", "ffn.0"))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("lora_a", "lora_b")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    export_lora(model.state_dict(), None, lora_path, alpha=4.0, rank=4, dtype=torch.float32)
    save_safetensors(merge_lora_state_dict(model.state_dict(), 1.0), merged_path, TINY_STREAM, TINY_DIT)


def write_input_video(path: Path, frames: int = 26, size: int = 32) -> Path:
    """A moving colour gradient (9 + 12 + 5 frames: two chunks and a partial one for the Wan VAE), 10 fps."""
    import numpy as np

    from sf_core.media.recording import VideoRecorder
    y, x = np.mgrid[0:size, 0:size]
    clip = np.stack([np.stack([(x * 8 + 6 * t) % 256, (y * 8) % 256, np.full_like(x, 40 * (t % 6))], -1)
                     for t in range(frames)]).astype(np.uint8)
    with VideoRecorder(path, fps=10) as recorder:
        recorder.write(clip)
    return path
