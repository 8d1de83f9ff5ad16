"""ComfyUI's own MODEL, CLIP and VAE wherever the Self-Forcing types are accepted, so users keep core loaders
and LoRA nodes (UNETLoader → LoraLoaderModelOnly → SF Stream Sampler).

- MODEL (a ModelPatcher of a Wan 2.1 DiT): its weights, with the patcher's LoRA / weight patches applied one
  tensor at a time, become a causal DiT of ours; ComfyUI's module is left untouched.
- VAE (Wan 2.1): its weights go into our streaming decoder / encoder.
- CLIP (CLIPLoader type wan): prompts are encoded through it and fitted to 512 tokens.

Conversions are remembered for the last object of each kind, so re-queuing does not convert again.
"""
from __future__ import annotations

import torch

from sf_core.weights.checkpoint import model_from_state_dict
from sf_core.vae.wan import StreamingDecoder, vae_from_state_dict

from . import memory
from .handles import MODEL_TYPE, TEXT_ENCODER_TYPE, VAE_TYPE, SFModel, SFPromptEncoder, SFVAE, fit_context

SOURCE_PREFIX = "diffusion_model."   # ModelPatcher patch keys name the DiT's weights under this prefix
_remembered: dict[str, tuple[tuple, object]] = {}


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU, fp32 on the CPU (the loaders' 'default')."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _remember(kind: str, key: tuple, build):
    hit = _remembered.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    _remembered.pop(kind, None)  # drop the old conversion before building the new one
    value = build()
    _remembered[kind] = (key, value)
    return value


def is_native_model(obj) -> bool:
    return hasattr(obj, "model") and hasattr(getattr(obj, "model"), "diffusion_model") and hasattr(obj, "patches")


def patched_state_dict(patcher) -> dict[str, torch.Tensor]:
    """The DiT's weights (bare Wan names) with the patcher's patches (LoRA, ...) applied, computed in float32."""
    from comfy.lora import calculate_weight

    state = patcher.model.diffusion_model.state_dict()
    for key, weight in state.items():
        patches = patcher.patches.get(SOURCE_PREFIX + key)
        if patches:
            state[key] = calculate_weight(patches, weight.to(torch.float32, copy=True), SOURCE_PREFIX + key)
    return state


def sf_model_from_native(patcher) -> SFModel:
    """Our DiT from a native MODEL, placed by ComfyUI's memory manager like SF Model Loader's. The stream
    settings are Self Forcing's defaults (a native file carries none of ours)."""
    import comfy.model_management as mm

    device = mm.get_torch_device()
    name = f"native MODEL ({type(patcher.model).__name__})"

    def build() -> SFModel:
        model, stream_config = model_from_state_dict(patched_state_dict(patcher), {}, name, default_dtype(device),
                                                     memory.offload_device("unet", device))
        model.eval().requires_grad_(False)
        return SFModel(model, stream_config, name, device, memory.model_patcher(model, device))

    key = (id(patcher.model), getattr(patcher, "patches_uuid", None), len(patcher.patches), str(device))
    return _remember("model", key, build)


def as_sf_model(value) -> SFModel:
    """Our SF_MODEL, or a native MODEL converted to one."""
    if isinstance(value, SFModel):
        return value
    if is_native_model(value):
        return sf_model_from_native(value)
    raise ValueError(f"expected an SF_MODEL or a native Wan 2.1 MODEL (UNETLoader), got {type(value).__name__}")


def sf_vae_from_native(vae, dtype: torch.dtype | None = None) -> SFVAE:
    """A native Wan 2.1 VAE (VAELoader) as our streaming decoder / encoder."""
    first_stage = getattr(vae, "first_stage_model", None)
    if first_stage is None or getattr(vae, "latent_channels", None) != 16:
        raise ValueError(f"expected a Wan 2.1 VAE (16 latent channels), got {type(first_stage).__name__} with "
                         f"{getattr(vae, 'latent_channels', '?')} latent channels")
    import comfy.model_management as mm

    device = mm.vae_device()
    dtype = dtype or default_dtype(device)

    def build() -> SFVAE:
        sd = {k: v.detach() for k, v in first_stage.state_dict().items()}
        wan = vae_from_state_dict(sd, "native ComfyUI VAE", memory.offload_device("vae", device), dtype)
        decoder = StreamingDecoder(wan)
        return SFVAE(decoder, "native VAE", wan if wan.has_encoder else None, memory.vae_patcher(decoder, device))

    return _remember("vae", (id(first_stage), str(device), dtype), build)


def as_sf_vae(value) -> SFVAE:
    """Our SF_VAE, or a native VAE converted to one."""
    if isinstance(value, SFVAE):
        return value
    if hasattr(value, "first_stage_model"):
        return sf_vae_from_native(value)
    raise ValueError(f"expected an SF_VAE or a native Wan 2.1 VAE (VAELoader), got {type(value).__name__}")


def native_clip_encoder(clip):
    """prompt -> [1, 512, D] through a native CLIP (type wan)."""
    def encode(text: str) -> torch.Tensor:
        cond = clip.encode_from_tokens(clip.tokenize(text))
        cond = cond[0] if isinstance(cond, (tuple, list)) else cond
        return fit_context(cond.float().cpu())

    return encode


def as_text_encoder(value):
    """Our text encoders as they are; a native CLIP as a prompt encoder (prompts -> [B, 512, D])."""
    if hasattr(value, "encode_from_tokens") and hasattr(value, "tokenize"):
        encode = native_clip_encoder(value)
        return SFPromptEncoder(lambda prompts: torch.cat([encode(p) for p in prompts]), "native CLIP")
    return value


# Input socket types: ours or core's (ComfyUI validates a link when the types share one name).
MODEL_INPUT = f"{MODEL_TYPE},MODEL"
VAE_INPUT = f"{VAE_TYPE},VAE"
TEXT_ENCODER_INPUT = f"{TEXT_ENCODER_TYPE},CLIP"
