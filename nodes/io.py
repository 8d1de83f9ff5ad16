"""Files: save / load a stream state, export a model for ComfyUI's native autoregressive sampler."""
from __future__ import annotations

import json
import os

from sf_core.weights.checkpoint import save_comfy_native_ar
from sf_core.config import StreamConfig
from sf_core.state import StreamState

from .categories import EXPORT
from .native import MODEL_INPUT, VAE_INPUT, as_sf_model, as_sf_vae
from .handles import CATEGORY, CONTEXT_TYPE, STREAM_TYPE, SFContext, SFStream

STATE_SUFFIX = ".sfstream.safetensors"


class SFSaveStream:
    DESCRIPTION = ("Saves a stream state (KV cache, VAE cache, noise, position, prompt) to the output folder as "
                   f"'<prefix>_NNNNN{STATE_SUFFIX}'. Move it to the input folder to continue it later with "
                   "'SF Load Stream'.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sf_stream": (STREAM_TYPE,),
                             "filename_prefix": ("STRING", {"default": "self_forcing/stream_state"})}}

    def save(self, sf_stream, filename_prefix):
        import folder_paths

        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                        folder_paths.get_output_directory())
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{name}_{counter:05}{STATE_SUFFIX}")
        state, info = sf_stream.state, sf_stream.state.info
        state.info = {**info, "sf_nodes": json.dumps({"fps": sf_stream.fps, "frames": sf_stream.frames,
                                                      "vae": sf_stream.vae.name, "model": sf_stream.model.name})}
        try:  # the input stream is shared with other nodes: leave it as it was
            state.save(path)
        finally:
            state.info = info
        return {"ui": {"text": [path]}, "result": (path,)}


def _state_files() -> list[str]:
    try:
        import folder_paths
    except ImportError:
        return []
    root = folder_paths.get_input_directory()
    found = []
    for folder, _, names in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names if n.endswith(STATE_SUFFIX)]
    return sorted(found)


class SFLoadStream:
    DESCRIPTION = (f"Loads a stream state ({STATE_SUFFIX}) from the input folder to continue it with "
                   "'SF Stream Extend'. Give it the same model and VAE the stream was made with.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (STREAM_TYPE,)
    RETURN_NAMES = ("sf_stream",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "state_file": (_state_files(),),
            "sf_model": (MODEL_INPUT,),
            "sf_vae": (VAE_INPUT,),
        }, "optional": {"sf_context": (CONTEXT_TYPE, {"tooltip": "Its text encoder enables live prompt switches; the "
                                                                 "stream keeps its saved prompt."})}}

    def load(self, state_file, sf_model, sf_vae, sf_context=None):
        import folder_paths

        sf_model, sf_vae = as_sf_model(sf_model), as_sf_vae(sf_vae)
        path = folder_paths.get_annotated_filepath(state_file)
        state = StreamState.load(path, device=sf_model.device, dtype=sf_model.dtype)
        config = StreamConfig.from_metadata({"sf_stream": state.info["stream"]}) if "stream" in state.info \
            else sf_model.stream_config
        state.check_compatible(sf_model.model, config, state_file)
        extra = json.loads(state.info.get("sf_nodes", "{}"))
        context = SFContext(state.context, None, sf_context.encode if sf_context is not None else None)
        return (SFStream(state, sf_model, sf_vae, context, config, extra.get("fps", 16.0), extra.get("frames", 0)),)


class SFExportNativeAR:
    DESCRIPTION = ("Writes the loaded model as a safetensors file for ComfyUI's native autoregressive video path "
                   "(SamplerARVideo, ComfyUI 0.8+) into models/diffusion_models: bare Wan2.1 keys plus the "
                   "'causal_ar' config metadata, and the stream defaults.")
    CATEGORY = EXPORT
    FUNCTION = "export"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sf_model": (MODEL_INPUT,),
                             "filename": ("STRING", {"default": "self_forcing_native_ar.safetensors"}),
                             "overwrite": ("BOOLEAN", {"default": False})}}

    def export(self, sf_model, filename, overwrite):
        import folder_paths

        sf_model = as_sf_model(sf_model)
        name = os.path.basename(filename.strip())
        if not name or name != filename.strip():
            raise ValueError(f"filename must be a plain file name (no folders), got {filename!r}")
        if not name.endswith(".safetensors"):
            name += ".safetensors"
        folders = folder_paths.get_folder_paths("diffusion_models")  # models/unet is listed first
        folder = next((f for f in folders if os.path.basename(os.path.normpath(f)) == "diffusion_models"), folders[0])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; set overwrite to replace it")
        save_comfy_native_ar(sf_model.model, path, sf_model.stream_config, sf_model.model.config)
        return {"ui": {"text": [path]}, "result": (path,)}


NODE_CLASS_MAPPINGS = {
    "SFSaveStream": SFSaveStream,
    "SFLoadStream": SFLoadStream,
    "SFExportNativeAR": SFExportNativeAR,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SFSaveStream": "SF Save Stream",
    "SFLoadStream": "SF Load Stream",
    "SFExportNativeAR": "SF Export Native AR",
}
