"""Loaders: the causal DiT, streaming VAE decoders, the umT5 text encoder, and bridges from native
ComfyUI VAE / CONDITIONING / CLIP objects."""
from __future__ import annotations

import os
from dataclasses import asdict

import torch

from sf_core.config import DTYPES
from sf_core.attention import BACKENDS
from sf_core.weights.checkpoint import load_model
from sf_core.vae.decoders import load_chunk_decoder
from sf_core.vae.taehv import StreamingTAEHVDecoder
from sf_core.text.encoder import TextEncoder

from . import memory

from .categories import CONDITIONING, LOADERS
from .native import TEXT_ENCODER_INPUT, as_text_encoder, native_clip_encoder, sf_vae_from_native
from .handles import (CONTEXT_TYPE, MODEL_TYPE, TEXT_ENCODER_TYPE, VAE_TYPE, SFContext, SFModel,
                      SFVAE, fit_context)

SF_FOLDER = "self_forcing"  # models/self_forcing: our own list, next to models/diffusion_models
MODEL_EXTENSIONS = {".safetensors", ".pt", ".pth", ".ckpt", ".bin"}


def register_model_folder() -> None:
    """Add the `self_forcing` model folder key (models/self_forcing) once (no-op outside ComfyUI)."""
    try:
        import folder_paths
    except ImportError:
        return

    if SF_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[SF_FOLDER] = (
            [os.path.join(folder_paths.models_dir, SF_FOLDER)], MODEL_EXTENSIONS)


def _files(*keys: str) -> list[str]:
    """Sorted file names of the folder keys (empty outside ComfyUI)."""
    try:
        import folder_paths
    except ImportError:
        return []

    names = set()
    for key in keys:
        names.update(folder_paths.get_filename_list(key))
    return sorted(names)


def _resolve(name: str, *keys: str) -> str:
    import folder_paths

    for key in keys:
        path = folder_paths.get_full_path(key, name)
        if path is not None:
            return path
    folders = [p for key in keys for p in folder_paths.get_folder_paths(key)]
    raise FileNotFoundError(f"{name!r} not found in any of {folders}; put the file there and refresh the page")


def _device():
    import comfy.model_management as mm

    return mm.get_torch_device()


def _vae_device():
    import comfy.model_management as mm

    return mm.vae_device()


def _dtype(choice: str, device: torch.device) -> torch.dtype | None:
    if choice == "default":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[choice]


class SFModelLoader:
    DESCRIPTION = ("Loads a causal Wan2.1 DiT (Self Forcing, CausVid, Causal Forcing, LongLive, ...) from "
                   "models/self_forcing or models/diffusion_models in any layout: official .pt, safetensors, "
                   "ComfyUI checkpoints, diffusers names, scaled fp8. Stream defaults (chunk size, steps, cache "
                   "window) come from the file's metadata when present.")
    CATEGORY = LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE, "STRING")
    RETURN_NAMES = ("sf_model", "info")

    @classmethod
    def INPUT_TYPES(cls):
        register_model_folder()
        return {"required": {
            "model_name": (_files(SF_FOLDER, "diffusion_models"), {
                "tooltip": "Checkpoint from models/self_forcing or models/diffusion_models, e.g. "
                           "self_forcing_dmd.pt"}),
            "dtype": (["default", "bf16", "fp16", "fp32"], {
                "tooltip": "Weight and compute dtype. default: bf16 on a GPU, fp32 on the CPU."}),
            "attention": (list(BACKENDS), {
                "default": "auto", "tooltip": "auto: flash-attn when installed on a GPU, else PyTorch SDPA. "
                                             "math is a slow exact reference."}),
        }}

    def load(self, model_name, dtype, attention):
        path = _resolve(model_name, SF_FOLDER, "diffusion_models")
        device = _device()
        model, stream_config = load_model(path, dtype=_dtype(dtype, device), device=memory.offload_device("unet", device))
        model.eval().requires_grad_(False)
        model.attention_backend = attention
        for module in model.modules():
            if hasattr(module, "backend"):
                module.backend = attention
        cfg = model.config
        params = sum(p.numel() for p in model.parameters())
        info = (f"{model_name}: {params / 1e6:.1f} M parameters, dim {cfg.dim}, {cfg.num_layers} layers, "
                f"{model.dtype} for {device} (placed by ComfyUI's memory manager); stream defaults "
                f"{asdict(stream_config) | {'extra': None}}")
        return SFModel(model, stream_config, model_name, device, memory.model_patcher(model, device)), info


class SFVAELoader:
    DESCRIPTION = ("Loads a streaming video decoder: the full Wan2.1 VAE from models/vae (wan_2.1_vae.safetensors, "
                   "also encodes start images) or a tiny TAEHV decoder from models/vae_approx (taew2_1, "
                   "lighttaew2_1: much faster, lower quality).")
    CATEGORY = LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (VAE_TYPE,)
    RETURN_NAMES = ("sf_vae",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (_files("vae", "vae_approx"), {
                "tooltip": "wan_2.1_vae.safetensors (models/vae) or taew2_1 / lighttaew2_1 (models/vae_approx)"}),
            "dtype": (["default", "bf16", "fp16", "fp32"], {"tooltip": "default: bf16 on a GPU, fp32 on the CPU."}),
            "tiny_decoder_mode": (["memory", "overlap"], {
                "tooltip": "TAEHV only. memory: exact streaming (same frames as decoding all at once); overlap: "
                           "the Self-Forcing demo's scheme (each chunk decoded with 3 latents of context)."}),
        }}

    def load(self, vae_name, dtype, tiny_decoder_mode):
        path = _resolve(vae_name, "vae", "vae_approx")
        device = _vae_device()
        decoder = load_chunk_decoder(path, device=memory.offload_device("vae", device), dtype=_dtype(dtype, device))
        if isinstance(decoder, StreamingTAEHVDecoder):
            decoder = StreamingTAEHVDecoder(decoder.model, tiny_decoder_mode)
            return (SFVAE(decoder, vae_name, patcher=memory.vae_patcher(decoder, device)),)
        encoder = decoder.vae if decoder.vae.has_encoder else None
        return (SFVAE(decoder, vae_name, encoder, memory.vae_patcher(decoder, device)),)


class SFVAEFromNative:
    DESCRIPTION = ("Uses a native ComfyUI VAE (from 'Load VAE', Wan 2.1) for streaming: its weights are read into "
                   "the Self-Forcing streaming decoder, which keeps its causal cache from chunk to chunk.")
    CATEGORY = LOADERS
    FUNCTION = "convert"
    RETURN_TYPES = (VAE_TYPE,)
    RETURN_NAMES = ("sf_vae",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("VAE", {"tooltip": "A Wan 2.1 VAE from the native 'Load VAE' node."}),
            "dtype": (["default", "bf16", "fp16", "fp32"], {"tooltip": "default: bf16 on a GPU, fp32 on the CPU."}),
        }}

    def convert(self, vae, dtype):
        return (sf_vae_from_native(vae, _dtype(dtype, _vae_device())),)


class SFTextEncoderLoader:
    DESCRIPTION = ("Loads the umT5-XXL text encoder from models/text_encoders (umt5_xxl_fp8_e4m3fn_scaled.safetensors, "
                   "the fp16 variant, or the official .pth) with its own tokenizer. Runs on the CPU or visits the GPU "
                   "only while encoding.")
    CATEGORY = LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (TEXT_ENCODER_TYPE,)
    RETURN_NAMES = ("sf_text_encoder",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder_name": (_files("text_encoders"), {"tooltip": "e.g. umt5_xxl_fp8_e4m3fn_scaled.safetensors"}),
            "device": (["auto", "cpu"], {"tooltip": "auto: ComfyUI's memory manager loads the weights onto its "
                                                     "text-encoder device for encoding and keeps them there until it "
                                                     "needs the memory; cpu: encode on the CPU. Scaled-fp8 files stay "
                                                     "fp8 in memory."}),
        }}

    def load(self, text_encoder_name, device):
        import comfy.model_management as mm

        path = _resolve(text_encoder_name, "text_encoders")
        target = mm.text_encoder_device() if device == "auto" else torch.device("cpu")
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        encoder = TextEncoder.load(path, dtype=dtype, device=memory.offload_device("text", target),
                                   keep_fp8=mm.supports_cast(target, torch.float8_e4m3fn))
        return (memory.text_encoder(encoder, target),)


class SFTextEncode:
    DESCRIPTION = "Encodes a prompt with the umT5 encoder into the context the stream sampler follows."
    CATEGORY = CONDITIONING
    FUNCTION = "encode"
    RETURN_TYPES = (CONTEXT_TYPE,)
    RETURN_NAMES = ("sf_context",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sf_text_encoder": (TEXT_ENCODER_INPUT, {"tooltip": "SF Text Encoder Loader, or a native CLIP "
                                                                "(CLIPLoader, type wan)."}),
            "prompt": ("STRING", {"multiline": True, "default": "a red fox trotting through fresh snow, cinematic",
                                  "tooltip": "What the video shows. Live switches and schedules re-use this encoder."}),
        }}

    def encode(self, sf_text_encoder, prompt):
        sf_text_encoder = as_text_encoder(sf_text_encoder)

        def encode(text: str) -> torch.Tensor:
            return fit_context(sf_text_encoder.encode([text]).float())

        note = truncation_note(sf_text_encoder, prompt)
        context = SFContext(encode(prompt), prompt, encode, note)
        return {"ui": {"text": [note]}, "result": (context,)} if note else (context,)


def truncation_note(encoder, prompt: str) -> str | None:
    """The encoder's note when it cuts `prompt` (ours, wrapped by the memory manager or not), else None."""
    for candidate in (encoder, getattr(encoder, "encoder", None)):
        truncation = getattr(candidate, "truncation", None)
        if callable(truncation):
            return truncation(prompt)
    return None


class SFConditioningToContext:
    DESCRIPTION = ("Bridges native CONDITIONING (CLIPTextEncode with a CLIPLoader of type 'wan') to the stream "
                   "sampler's context: the embedding is truncated or zero-padded to 512 tokens. Give it the CLIP too "
                   "to allow live prompt switches and prompt schedules.")
    CATEGORY = CONDITIONING
    FUNCTION = "convert"
    RETURN_TYPES = (CONTEXT_TYPE,)
    RETURN_NAMES = ("sf_context",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)},
                "optional": {"clip": ("CLIP", {"tooltip": "The umT5 CLIP the conditioning came from; needed only "
                                                          "for live prompt switches and schedules."})}}

    def convert(self, conditioning, clip=None):
        if not conditioning or not hasattr(conditioning[0][0], "shape"):
            raise ValueError("expected CONDITIONING from CLIPTextEncode (a list of [tensor, dict] pairs)")
        embedding = conditioning[0][0]
        if embedding.dim() != 3:
            raise ValueError(f"conditioning tensor must be [batch, tokens, dim], got {tuple(embedding.shape)}")
        encode = native_clip_encoder(clip) if clip is not None else None
        return (SFContext(fit_context(embedding.float().cpu()), None, encode),)


NODE_CLASS_MAPPINGS = {
    "SFModelLoader": SFModelLoader,
    "SFVAELoader": SFVAELoader,
    "SFVAEFromNative": SFVAEFromNative,
    "SFTextEncoderLoader": SFTextEncoderLoader,
    "SFTextEncode": SFTextEncode,
    "SFConditioningToContext": SFConditioningToContext,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SFModelLoader": "SF Model Loader",
    "SFVAELoader": "SF VAE Loader",
    "SFVAEFromNative": "SF VAE From Native",
    "SFTextEncoderLoader": "SF Text Encoder Loader",
    "SFTextEncode": "SF Text Encode",
    "SFConditioningToContext": "SF Conditioning To Context",
}
