"""Where the nodes sit in the Add Node menu: inside the host's own trees, beside the core nodes they work with,
each group under a 'Self-Forcing' leaf. ComfyUI renamed its roots over time (0.3.75: `loaders`, `sampling`,
`conditioning`; 0.33: `model/loaders`, `model/sampling`, `model/conditioning`), so each root is read from a core
node of the running host; outside ComfyUI the 0.3.75 names are used."""
from __future__ import annotations

import sys

LEAF = "Self-Forcing"


def _core(node_type: str, default: str) -> str:
    """The category of a core node in the running ComfyUI (its `nodes` module), else `default`."""
    mappings = getattr(sys.modules.get("nodes"), "NODE_CLASS_MAPPINGS", None) or {}
    category = getattr(mappings.get(node_type), "CATEGORY", None)
    return category if isinstance(category, str) and category else default


def _under(root: str) -> str:
    return f"{root}/{LEAF}"


LOADERS = _under(_core("CheckpointLoaderSimple", "loaders"))           # model, VAE, text encoder loaders
SAMPLING = _under(_core("KSampler", "sampling") + "/video")            # stream sampler, extend, stream state
CONDITIONING = _under(_core("CLIPTextEncode", "conditioning"))          # prompts, schedules, start image
EXPORT = _under(_core("ModelSave", "advanced/model_merging"))          # write a model for core's AR sampler
UTILS = _under("utilities" if _core("KSampler", "sampling").startswith("model/") else "utils")  # checks
