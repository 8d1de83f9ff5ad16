"""The stream nodes' `speed` option: one of sf_core.speed.settings' levels, resolved for the model's device.

In a node, `safe` means CUDA-graph replay (and RoPE / time embeddings once per chunk) and `max` adds compile,
fast RoPE, fp8 linears and the cuDNN kernel where the device has them. A node's stream can always be extended,
so no level skips the last cache pass here; decoding stays in step with the live preview (no overlap).
"""
from __future__ import annotations

import torch.nn as nn

from sf_core.speed.settings import LEVELS, SpeedSettings, accelerate, resolve_speed

DEFAULT = "safe"
INHERIT = "stream"
NODE_FIXED = {"skip_last_cache_pass": False, "overlap_decode": False}


def speed_input() -> dict:
    """The optional `speed` widget (graphs saved before it keep working: they get the default)."""
    return {"speed": (list(LEVELS), {"default": DEFAULT, "tooltip": (
        "off: the plain path. safe: every optimisation that leaves the output unchanged on this device (CUDA "
        "graphs on a GPU). max: also torch.compile, fast RoPE, fp8 linears (sm89+), cuDNN attention — output "
        "within bf16 tolerance. The resolved choice is in the report.")})}


def extend_speed_input() -> dict:
    """The extend node's `speed`: the stream's own level unless another one is chosen."""
    return {"speed": ([INHERIT, *LEVELS], {"default": INHERIT, "tooltip": (
        "stream: the level the stream was made with (the sampler's speed); or off / safe / max for this "
        "extension (see the sampler's tooltip). Every level continues the stream exactly where it ended.")})}


def stream_level(stream) -> str:
    """The level a stream runs at: what its sampler / extend chose ('' from a graph saved before the menu,
    or a stream loaded from a file: the default)."""
    return stream.info.get("speed") or DEFAULT


def node_speed(level: str, sf_model) -> SpeedSettings:
    return resolve_speed(level, sf_model.device, sf_model.dtype, NODE_FIXED)


def stream_forward(sf_model, level: str) -> nn.Module:
    """What the node's pipeline runs for `level` (reused across runs of the same model: graphs and compiled code
    survive from one queue run to the next)."""
    return accelerate(sf_model.model, node_speed(level, sf_model))
