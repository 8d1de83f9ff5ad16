"""ComfyUI entry point of the Self Forcing streaming-video extension.

ComfyUI imports this repository (placed in ``custom_nodes/``) as a package. Outside ComfyUI — unit tests
that import ``sf_core`` directly, or pytest importing the rootdir package — importing this file is
harmless: the node mappings stay empty.
"""
import os
import sys

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}


def _inside_comfyui() -> bool:
    try:
        import comfy.model_management  # noqa: F401  (only importable inside a ComfyUI process)
    except Exception:
        return False
    return True


if __package__ and _inside_comfyui():
    # Node modules import the core library as the top-level package `sf_core`. Appending (not
    # prepending) keeps ComfyUI's own modules — notably its `nodes` module — first on the path.
    _ROOT = os.path.dirname(os.path.abspath(__file__))
    if _ROOT not in sys.path:
        sys.path.append(_ROOT)
    from .nodes import load_node_mappings

    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = load_node_mappings()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
