"""ComfyUI node modules (classic V1 API). Thin adapters over `sf_core`.

Each module listed in `NODE_MODULES` defines `NODE_CLASS_MAPPINGS` and `NODE_DISPLAY_NAME_MAPPINGS`.
Importing this package has no side effects; ComfyUI's entry point calls `load_node_mappings()`.
"""
import importlib

NODE_MODULES = ("diagnostics", "test_pattern", "loaders", "embedded", "stream", "io", "v2v", "lora")


def load_node_mappings():
    """Import every node module, register the live-control HTTP routes, and merge the mappings.

    Returns (NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS). A class attribute
    `SF_LIVE_PREVIEW = True` marks node types that get the live preview widget in the browser.
    """
    from . import live, memory

    classes, names = {}, {}
    for module_name in NODE_MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        for key, cls in module.NODE_CLASS_MAPPINGS.items():
            if key in classes:
                raise ValueError(f"node type {key!r} defined twice (nodes/{module_name}.py)")
            classes[key] = cls
            if getattr(cls, "SF_LIVE_PREVIEW", False):
                live.PREVIEW_NODE_TYPES.add(key)
        names.update(module.NODE_DISPLAY_NAME_MAPPINGS)
    live.register_routes()
    memory.register_routes()
    return classes, names
