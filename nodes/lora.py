"""SF LoRA: a Wan2.1 LoRA on our model, applied the way ComfyUI applies its own (a patched clone of the model's
ModelPatcher: the weights are merged when the stream loads the model, the originals kept on the offload device
and restored when an unpatched clone loads). The input model is never changed. Core `LoraLoaderModelOnly`
works on a native MODEL feeding the stream nodes (nodes/native.py)."""
from __future__ import annotations

import dataclasses

import torch

from sf_core.weights.lora import read_lora

from .categories import LOADERS
from .handles import MODEL_TYPE
from .loaders import _files
from .native import MODEL_INPUT, as_sf_model


def comfy_patches(layers) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Our matched layers as a kohya-named state dict and the key map `comfy.lora.load_lora` takes."""
    sd, key_map = {}, {}
    for name, layer in layers.items():
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = layer.down, layer.up
        sd[f"{name}.alpha"] = torch.tensor(layer.scale * layer.down.shape[0])
        key_map[name] = f"{name}.weight"
    return sd, key_map


class SFLoRA:
    DESCRIPTION = ("Applies a Wan2.1 LoRA (kohya / ComfyUI lora_down/lora_up + alpha, diffusers / PEFT lora_A/lora_B, "
                   "or one exported by 'python -m sf_core.train export --lora') to the Self-Forcing model: merged into "
                   "the weights when the stream starts, so it costs nothing per chunk. Chain several. Keys that match "
                   "no layer are listed in the report; a LoRA for another model is refused with the shapes.")
    CATEGORY = LOADERS
    FUNCTION = "apply"
    RETURN_TYPES = (MODEL_TYPE, "STRING")
    RETURN_NAMES = ("sf_model", "report")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sf_model": (MODEL_INPUT, {"tooltip": "SF Model Loader (or another SF LoRA), or a native Wan 2.1 MODEL."}),
            "lora_name": (_files("loras"), {"tooltip": "A file in models/loras."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                   "tooltip": "0 leaves the model exactly as it is."}),
        }}

    def apply(self, sf_model, lora_name, strength):
        import comfy.lora
        import folder_paths

        sf_model = as_sf_model(sf_model)
        lora = read_lora(folder_paths.get_full_path_or_raise("loras", lora_name), sf_model.model)
        report = f"{lora.report()}; strength {strength}"
        if lora.text_layers:
            report += " (its text-encoder layers are not applied by this node)"
        if strength == 0 or not lora.layers:
            return sf_model, report
        patcher = sf_model.patcher.clone()
        patcher.weight_inplace_update = True  # patch the existing tensors: pipelines and graphs keep them
        sd, key_map = comfy_patches(lora.layers)
        patcher.add_patches(comfy.lora.load_lora(sd, key_map, log_missing=False), strength)
        return dataclasses.replace(sf_model, patcher=patcher, name=f"{sf_model.name} + {lora_name}"), report


NODE_CLASS_MAPPINGS = {"SFLoRA": SFLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"SFLoRA": "SF LoRA"}
