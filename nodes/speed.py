"""The stream nodes' `speed` option: one of sf_core.speed.settings' levels, resolved for the model's device.

In a node, `safe` means CUDA-graph replay (and RoPE / time embeddings once per chunk) and `max` adds compile and
fast RoPE where the device has them. A node's stream can always be extended, so no level skips the last cache
pass here; decoding stays in step with the live preview (no overlap); the model is ComfyUI's, so nothing
changes it in place (no fp8 swap; the attention kernel is the loader's option).
"""
from __future__ import annotations

from dataclasses import replace

import torch.nn as nn

from sf_core.speed.settings import LEVELS, SpeedSettings, accelerate, resolve_speed

DEFAULT = "safe"
INHERIT = "stream"
NODE_FIXED = {"skip_last_cache_pass": False, "overlap_decode": False}


def speed_input() -> dict:
    """The optional `speed` widget (graphs saved before it keep working: they get the default)."""
    return {"speed": (list(LEVELS), {"default": DEFAULT, "tooltip": (
        "off: the plain path. safe: every optimisation that leaves the output unchanged on this device (CUDA "
        "graphs on a GPU). max: also torch.compile and fast RoPE — output within bf16 tolerance. The resolved "
        "choice is in the report.")})}


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
    """The level for a node: never the in-place switches (the model is ComfyUI's, shared with other nodes):
    the attention kernel is the loader's choice, and fp8 would rewrite the weights."""
    s = resolve_speed(level, sf_model.device, sf_model.dtype, NODE_FIXED)
    notes = [n for n in s.notes if not n.startswith("fp8")]
    if s.fp8:
        notes.append("fp8: off in the nodes (it would rewrite ComfyUI's copy of the weights)")
    return replace(s, attention=None, fp8=False, notes=tuple(notes))


def stream_forward(sf_model, level: str) -> nn.Module:
    """What the node's pipeline runs for `level` (reused across runs of the same model: graphs and compiled code
    survive from one queue run to the next)."""
    return accelerate(sf_model.model, node_speed(level, sf_model))
