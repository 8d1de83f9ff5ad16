"""Stream state: everything needed to continue a stream exactly — snapshot, fork, save, restore."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file
from safetensors import safe_open

from .cache import CacheError, KVCache
from sf_core.weights.checkpoint import write_safetensors_atomic
from sf_core.weights.fingerprint import same_weights, weights_fingerprint
from .noise import NoiseSource, noise_from_spec, SeededNoise

FORMAT = "sf_stream_state/1"


class StateError(ValueError):
    """A stream-state file cannot be used."""


@dataclass
class StreamState:
    cache: KVCache
    context: torch.Tensor                      # [B, L, text_dim] current prompt embedding
    latent_height: int
    latent_width: int
    noise: NoiseSource
    next_frame: int = 0                        # absolute latent frame of the next chunk
    chunk_index: int = 0                       # chunks generated so far (prefill excluded)
    history: torch.Tensor | None = None        # [B, Fh, C, h, w] clean latents still in the cache window
    history_start: int = 0                     # absolute frame index of history[:, 0]
    sink_latents: torch.Tensor | None = None   # [B, S, C, h, w] the pinned sink frames
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. a VAE decoder state ("vae.*")
    info: dict = field(default_factory=dict)   # JSON-able facts (model config, stream config)

    @property
    def batch(self) -> int:
        return self.context.shape[0]

    def snapshot(self) -> "StreamState":
        """An independent copy; continuing either copy leaves the other untouched. The KV cache is shared
        copy-on-write (`KVCache.share`): continuing a global cache copies nothing."""
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        return StreamState(self.cache.share(), self.context.clone(), self.latent_height, self.latent_width,
                           self.noise, self.next_frame, self.chunk_index, clone(self.history),
                           self.history_start, clone(self.sink_latents),
                           {k: v.clone() for k, v in self.extras.items()}, json.loads(json.dumps(self.info)))

    def fork(self, noise: NoiseSource | None = None) -> "StreamState":
        """A snapshot that optionally continues with a different noise source (e.g. another seed)."""
        s = self.snapshot()
        if noise is not None:
            s.noise = noise
        return s

    # -- files ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the state to a safetensors file (atomically)."""
        spec = getattr(self.noise, "spec", None)
        if spec is None:
            raise StateError(f"cannot save a stream whose noise source {self.noise!r} has no spec(); "
                             "use SeededNoise or give the source a spec() method")
        tensors = dict(self.cache.state_dict("cache."))
        tensors["context"] = self.context
        if self.history is not None:
            tensors["history"] = self.history
        if self.sink_latents is not None:
            tensors["sink_latents"] = self.sink_latents
        tensors.update({"extras." + k: v for k, v in self.extras.items()})
        meta = {"format": FORMAT, "state": json.dumps({
            "latent_height": self.latent_height, "latent_width": self.latent_width,
            "next_frame": self.next_frame, "chunk_index": self.chunk_index,
            "history_start": self.history_start, "noise": spec(), "info": self.info})}
        write_safetensors_atomic(tensors, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None) -> "StreamState":
        path = os.fspath(path)
        s = read_header(path)
        noise = noise_from_spec(s["noise"])
        if noise is None:
            raise StateError(f"{path}: unknown noise source {s['noise']!r}")
        try:
            tensors = load_file(path, device=str(device))
        except Exception as e:  # safetensors raises several types for damaged files
            raise StateError(f"{path}: not a readable safetensors stream state ({e})") from None
        if "context" not in tensors:
            raise StateError(f"{path}: the stream state has no 'context' tensor (the prompt embedding); "
                             "the file is damaged or was not written by StreamState.save")
        try:
            cache = KVCache.from_state_dict(tensors, "cache.", device=device, dtype=dtype)
        except (CacheError, ValueError, RuntimeError) as e:
            raise StateError(f"{path}: {e}") from None
        cast = lambda t: t if t is None or dtype is None else t.to(dtype)  # noqa: E731
        return cls(cache, cast(tensors["context"]), s["latent_height"], s["latent_width"], noise,
                   s["next_frame"], s["chunk_index"], cast(tensors.get("history")), s["history_start"],
                   cast(tensors.get("sink_latents")),
                   {k[len("extras."):]: v for k, v in tensors.items() if k.startswith("extras.")}, s["info"])

    def check_compatible(self, model, stream, source: str, latent_size: tuple[int, int] | None = None) -> None:
        """Raise `StateError` naming what differs if this state cannot continue on `model` with `stream`
        (a StreamConfig) at `latent_size` (h, w; None: the state's own)."""
        info = self.info
        saved = _json_object(info.get("model"))
        ours = json.loads(model.config.to_json())
        differ = [f"{k}={saved[k]} (this model: {ours[k]})" for k in ours if k in saved and saved[k] != ours[k]]
        if differ:
            raise StateError(f"{source}: made with a different model: {', '.join(differ)}")
        if isinstance(info.get("weights"), str) and not same_weights(info["weights"], weights_fingerprint(model)):
            raise StateError(f"{source}: made with other weights of the same shape (the sampled weights differ "
                             "from this checkpoint's); load the checkpoint it was made with")
        made = _json_object(info.get("stream"))
        for key in ("chunk_frames", "window", "sink"):
            if key in made and made[key] != getattr(stream, key):
                raise StateError(f"{source}: the stream was made with {key}={made[key]}, this run has "
                                 f"{key}={getattr(stream, key)}; they must match")
        size = (self.latent_height, self.latent_width)
        if latent_size is not None and tuple(latent_size) != size:
            raise StateError(f"{source}: the stream is {size[1]}x{size[0]} latent pixels, this run asks for "
                             f"{latent_size[1]}x{latent_size[0]}; continue it at the size it was made at")


HEADER_FIELDS = ("latent_height", "latent_width", "next_frame", "chunk_index", "history_start")


def _json(text, default=None):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default


def _json_object(text) -> dict:
    value = _json(text)
    return value if isinstance(value, dict) else {}


def read_header(path: str | os.PathLike) -> dict:
    """The validated 'state' metadata of a stream-state file (header only, no tensors read)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise StateError(f"{path}: stream-state file not found")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for damaged files
        raise StateError(f"{path}: not a readable safetensors stream state ({e})") from None
    if meta.get("format") != FORMAT:
        raise StateError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r} "
                         "(save it with StreamState.save or the SF Save Stream node)")
    s = _json(meta.get("state"))
    if not isinstance(s, dict):
        raise StateError(f"{path}: metadata 'state' is missing or not a JSON object; the file is damaged "
                         "(save it again with StreamState.save)")
    wrong = [k for k in HEADER_FIELDS if type(s.get(k)) is not int or s[k] < 0]
    wrong += ([] if "noise" in s else ["noise"]) + ([] if isinstance(s.get("info"), dict) else ["info"])
    if wrong:
        raise StateError(f"{path}: metadata 'state' has missing or invalid field(s) {wrong}; expected "
                         f"non-negative integers {list(HEADER_FIELDS)}, a noise spec and an info object")
    return s


__all__ = ["StreamState", "StateError", "SeededNoise", "read_header"]
