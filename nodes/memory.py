"""ComfyUI's memory manager decides where our weights live.

The DiT, the VAE and the umT5 encoder are each wrapped in a `comfy.model_patcher.ModelPatcher`, so
`comfy.model_management` loads, offloads and evicts them like its own models (`/free`, other models'
loads, "Unload models" in the UI). Before a stream allocates its KV cache, `load_for_stream` asks the
manager to load our models in full *and* free the bytes the cache, the decoder state and the activation
peak need (sized by `sf_core.memory`), so other models are offloaded first instead of running out of memory.
"""
from __future__ import annotations

import functools

import torch

from sf_core.memory import cross_cache_bytes, decoder_phase, dit_activation_peak, kv_cache_bytes

GIB = 1024 ** 3


def patcher(module: torch.nn.Module, load_device, offload_device):
    """A ModelPatcher for one of our modules: its weights move between `load_device` and `offload_device`
    (None outside ComfyUI, e.g. unit tests of the nodes: the weights then stay where they are)."""
    try:
        import comfy.model_patcher
    except ImportError:
        return None
    return comfy.model_patcher.ModelPatcher(module, load_device=torch.device(load_device),
                                            offload_device=torch.device(offload_device))


def offload_device(kind: str, device) -> torch.device:
    """Where ComfyUI keeps a `kind` ("unet", "vae", "text") model that is not loaded onto `device`."""
    if torch.device(device).type == "cpu":
        return torch.device("cpu")
    import comfy.model_management as mm

    return {"unet": mm.unet_offload_device, "vae": mm.vae_offload_device,
            "text": mm.text_encoder_offload_device}[kind]()


def model_patcher(module: torch.nn.Module, device):
    """The DiT's patcher: computes on `device`, rests where ComfyUI keeps offloaded diffusion models."""
    return patcher(module, device, offload_device("unet", device))


def decoder_module(decoder) -> torch.nn.Module | None:
    """The weights behind a streaming decoder (Wan VAE, TAEHV); None for weightless ones (toy pixels)."""
    module = getattr(decoder, "vae", None) or getattr(decoder, "model", None)
    return module if isinstance(module, torch.nn.Module) else None


def vae_patcher(decoder, device):
    module = decoder_module(decoder)
    return None if module is None else patcher(module, device, offload_device("vae", device))


def load(patchers, extra_bytes: int = 0) -> None:
    """Load `patchers` fully on their devices after freeing room for them plus `extra_bytes` there."""
    import comfy.model_management as mm

    found = [p for p in patchers if p is not None]
    if found:
        mm.load_models_gpu(found, memory_required=extra_bytes, force_full_load=True)


def _decoder_kind(decoder) -> str | None:
    from sf_core.vae.taehv import StreamingTAEHVDecoder
    from sf_core.vae.wan import StreamingDecoder

    if isinstance(decoder, StreamingDecoder):
        return "wan"
    return "taehv" if isinstance(decoder, StreamingTAEHVDecoder) else None


@functools.lru_cache(maxsize=32)
def _activation_bytes(config, latent_hw, chunk_frames, capacity, window, sink, batch, dtype, kind) -> int:
    """Traced (FakeTensorMode) activation peak of a chunk, plus the decoder's causal state; cached per shape."""
    dit = dit_activation_peak(config, latent_hw, chunk_frames, capacity, window, sink, batch, dtype)
    if kind is None:
        return dit
    _, state, decode = decoder_phase(kind, latent_hw, chunk_frames, batch, dtype)
    return state + max(dit, decode)


def stream_bytes(model, config, decoder, latent_hw: tuple[int, int], capacity: int, batch: int = 1) -> dict:
    """Device bytes a stream needs beyond the weights: {"kv_cache", "cross_cache", "activations", "total"}.

    `capacity`: latent frames the KV cache holds (the window, or the global length); `model`: the DiT.
    """
    cfg, dtype = model.config, model.dtype
    frame_tokens = model.frame_tokens(*latent_hw)
    out = {"kv_cache": kv_cache_bytes(cfg, frame_tokens, capacity, batch, dtype),
           "cross_cache": cross_cache_bytes(cfg, batch, dtype),
           "activations": _activation_bytes(cfg, tuple(latent_hw), config.chunk_frames, capacity, config.window,
                                            config.sink, batch, dtype, _decoder_kind(decoder))}
    out["total"] = sum(out.values())
    return out


def describe(need: dict) -> str:
    return (f"asked ComfyUI to free {need['total'] / GIB:.2f} GiB before allocating (KV cache "
            f"{need['kv_cache'] / GIB:.2f}, cross cache {need['cross_cache'] / GIB:.2f}, activations and decoder "
            f"state {need['activations'] / GIB:.2f})")


def loaded_models() -> list[dict]:
    """What `comfy.model_management` holds now: one row per loaded model (ours are marked)."""
    import comfy.model_management as mm

    rows = []
    for loaded in mm.current_loaded_models:
        patch = loaded.model
        if patch is None:
            continue
        module = patch.model
        rows.append({"class": type(module).__name__, "ours": type(module).__module__.startswith("sf_core"),
                     "device": str(patch.current_loaded_device()), "load_device": str(patch.load_device),
                     "loaded_bytes": int(patch.loaded_size()), "size_bytes": int(patch.model_size())})
    return rows


def process_rss() -> int:
    """Resident set size of this process in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


_routes_registered = False


def register_routes() -> None:
    """`GET /sf/memory`: the memory manager's loaded models and the server's RSS (diagnostics, tests)."""
    global _routes_registered
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None or _routes_registered:
        return

    @server.routes.get("/sf/memory")
    async def memory(request):
        return web.json_response({"loaded_models": loaded_models(), "rss_bytes": process_rss()})

    _routes_registered = True


class ManagedTextEncoder:
    """A `sf_core.text.encoder.TextEncoder` whose weights ComfyUI places: loaded to the text-encoder device
    before an encode and left there until the manager needs the memory (no move per prompt)."""

    def __init__(self, encoder, patch):
        self.encoder, self.patcher = encoder, patch

    def encode(self, prompts):
        load([self.patcher])
        self.encoder.device = self.patcher.load_device  # where the weights now are: ids go there too
        return self.encoder.encode(prompts)


def text_encoder(encoder, device) -> ManagedTextEncoder:
    """Wrap a TextEncoder whose weights rest on `offload_device("text", device)` and compute on `device`."""
    return ManagedTextEncoder(encoder, patcher(encoder.model, device, offload_device("text", device)))
