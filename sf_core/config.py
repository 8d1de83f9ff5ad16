"""Model and stream configuration, and inference of the model configuration from a state dict."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

import torch

# The one table of dtype names: short names (node widgets, convert, benchmarks) and torch's long names
# (CLI, training configs) both map here.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT_DTYPE_NAMES = ("bf16", "fp16", "fp32")
LONG_DTYPE_NAMES = ("float32", "bfloat16", "float16")


def short_dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bf16"."""
    return next(name for name in SHORT_DTYPE_NAMES if DTYPES[name] == dtype)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Wan2.1 DiT. Defaults are Wan2.1-T2V-1.3B."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    model_type: str = "t2v"
    qk_norm: bool = True
    cross_attn_norm: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        raw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in known}
        return cls(**raw)


WAN_1_3B = ModelConfig()
WAN_14B = ModelConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)


class ConfigError(ValueError):
    """A state dict does not describe a Wan2.1 DiT."""


def infer_config(sd: dict, source: str = "state dict") -> ModelConfig:
    """Read a ModelConfig off bare Wan key names and shapes (shapes may come from meta tensors)."""
    if "head.modulation" not in sd:
        sample = ", ".join(sorted(sd)[:5]) or "<empty>"
        raise ConfigError(
            f"{source}: not a Wan2.1 DiT: key 'head.modulation' missing (first keys: {sample}); "
            "expected bare Wan2.1 names such as 'patch_embedding.weight', 'blocks.0.self_attn.q.weight'"
        )
    needed = ["patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
              "head.head.weight", "blocks.0.ffn.0.weight"]
    missing = [k for k in needed if k not in sd]
    if missing:
        raise ConfigError(f"{source}: Wan2.1 DiT keys missing: {missing}")
    pe = sd["patch_embedding.weight"].shape  # [dim, in_dim, pt, ph, pw]
    if len(pe) != 5:
        raise ConfigError(f"{source}: 'patch_embedding.weight' has shape {tuple(pe)}, expected 5 dims "
                          "[dim, in_dim, 1, 2, 2]")
    dim, in_dim, patch = int(pe[0]), int(pe[1]), (int(pe[2]), int(pe[3]), int(pe[4]))
    if dim % 128:
        raise ConfigError(f"{source}: dim {dim} is not a multiple of the Wan2.1 head size 128; "
                          "store the config in the file's 'sf_model' metadata to load other head sizes")
    num_heads = dim // 128
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    if layers != set(range(len(layers))):
        raise ConfigError(f"{source}: block indices are not contiguous: {sorted(layers)}")
    patch_vol = patch[0] * patch[1] * patch[2]
    return ModelConfig(
        dim=dim,
        ffn_dim=int(sd["blocks.0.ffn.0.weight"].shape[0]),
        num_heads=num_heads,
        num_layers=len(layers),
        in_dim=in_dim,
        out_dim=int(sd["head.head.weight"].shape[0]) // patch_vol,
        text_dim=int(sd["text_embedding.0.weight"].shape[1]),
        freq_dim=int(sd["time_embedding.0.weight"].shape[1]),
        patch_size=patch,
        model_type="i2v" if any(k.startswith("img_emb.") for k in sd) else "t2v",
        qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
        cross_attn_norm="blocks.0.norm3.weight" in sd,
    )


@dataclass(frozen=True)
class StreamConfig:
    """How a causal checkpoint is meant to be sampled; stored in our safetensors metadata."""

    chunk_frames: int = 3                     # latent frames per block (3 chunk-wise, 1 frame-wise)
    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    warp_denoising_step: bool = True
    shift: float = 5.0
    window: int = -1                          # rolling window in latent frames (local_attn_size); -1 = global
    sink: int = 0                             # latent frames pinned at the start of a rolling cache
    context_noise: float = 0.0                # timestep of the cache-update pass
    extra: dict = field(default_factory=dict, compare=False)

    def problems(self) -> list[str]:
        """What makes these settings impossible to sample with (empty when they are fine)."""
        def number(x, low):
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= low
        found = []
        if not (isinstance(self.chunk_frames, int) and self.chunk_frames >= 1):
            found.append(f"chunk_frames={self.chunk_frames!r} (expected an integer >= 1)")
        if not (number(self.shift, 0) and self.shift > 0):
            found.append(f"shift={self.shift!r} (expected a finite number > 0)")
        if not (isinstance(self.window, int) and (self.window == -1 or self.window >= 1)):
            found.append(f"window={self.window!r} (expected -1 for a global cache or >= 1)")
        if not (isinstance(self.sink, int) and self.sink >= 0):
            found.append(f"sink={self.sink!r} (expected an integer >= 0)")
        if not (number(self.context_noise, 0) and self.context_noise <= 1000):
            found.append(f"context_noise={self.context_noise!r} (expected a timestep in [0, 1000])")
        if not self.denoising_steps or not all(number(t, 0) and 0 < t <= 1000 for t in self.denoising_steps):
            found.append(f"denoising_steps={list(self.denoising_steps)!r} (expected values in (0, 1000])")
        return found

    def to_metadata(self) -> dict[str, str]:
        d = asdict(self)
        d.pop("extra")
        return {"sf_stream": json.dumps(d)}

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None) -> "StreamConfig | None":
        if not meta or "sf_stream" not in meta:
            return None
        raw = json.loads(meta["sf_stream"])
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in raw.items() if k in known}
        if "denoising_steps" in kw:
            kw["denoising_steps"] = tuple(float(s) for s in kw["denoising_steps"])
        return cls(**kw)
