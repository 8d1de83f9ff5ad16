"""The project's embedded default model (sf_core/toy/assets/default) as one loader node: no downloads."""
from __future__ import annotations

import torch

from sf_core.config import DTYPES
from sf_core.generate.files import default_model
from sf_core.generate.bundle import load_bundle

from .categories import LOADERS
from . import memory
from .handles import MODEL_TYPE, TEXT_ENCODER_TYPE, VAE_TYPE, SFModel, SFPromptEncoder, SFVAE

NAME = "embedded default"


def _suggestion(defaults: dict) -> str:
    keys = ("prompt", "width", "height", "fps", "chunks")
    return ", ".join(f"{k} {defaults[k]!r}" for k in keys if k in defaults)


class SFEmbeddedDefaultModel:
    DESCRIPTION = ("Loads the small video model shipped inside this extension (trained by the project itself on a "
                   "procedural world of coloured shapes): model, text encoder and decoder, nothing to download. "
                   "Prompts use the toy vocabulary, e.g. 'a red circle moves right on a navy background'; the "
                   "info output lists the suggested prompt, size and fps.")
    CATEGORY = LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE, TEXT_ENCODER_TYPE, VAE_TYPE, "STRING")
    RETURN_NAMES = ("sf_model", "sf_text_encoder", "sf_vae", "info")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "device": (["cpu", "auto"], {"tooltip": "cpu: the model is tiny and streams faster than real time on a "
                                                    "CPU. auto: ComfyUI's device (the GPU when there is one)."}),
        }}

    def load(self, device):
        if device == "cpu":
            target = torch.device("cpu")
        else:
            import comfy.model_management as mm
            target = mm.get_torch_device()
        dtype = torch.float32 if target.type == "cpu" else DTYPES["bf16"]
        files = default_model()
        bundle = load_bundle(files, target, dtype, decoder_dtype=torch.float32 if target.type == "cpu" else dtype)
        decoder = bundle.decoder
        encoder = getattr(decoder, "vae", None)
        vae = SFVAE(decoder, NAME, encoder if getattr(encoder, "has_encoder", False) else None,
                    memory.vae_patcher(decoder, target))
        params = sum(p.numel() for p in bundle.model.parameters())
        info = (f"{files.description}\n{params / 1e6:.2f} M parameters, {bundle.model.dtype} on {target}; "
                f"suggested: {_suggestion(files.defaults)}")
        model = SFModel(bundle.model, bundle.stream_config, NAME, target, memory.model_patcher(bundle.model, target))
        return model, SFPromptEncoder(bundle.encode, NAME, bundle.truncation), vae, info


NODE_CLASS_MAPPINGS = {"SFEmbeddedDefaultModel": SFEmbeddedDefaultModel}
NODE_DISPLAY_NAME_MAPPINGS = {"SFEmbeddedDefaultModel": "SF Embedded Default Model"}
