"""'SF Environment Info': what this ComfyUI install offers the Self Forcing nodes (versions, device,
attention backends) — the first thing to attach to a bug report."""
from __future__ import annotations

import importlib.util
import platform

import torch

from .categories import UTILS


def _module_version(name: str) -> str | None:
    """Version of an importable module, 'installed' if it has none, None if it is missing."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        module = importlib.import_module(name)
    except Exception as error:  # a broken install is worth reporting, not crashing on
        return f"broken ({type(error).__name__}: {error})"
    return str(getattr(module, "__version__", "installed"))


def _flex_attention_available() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def _comfy_device() -> str | None:
    try:
        import comfy.model_management as mm
    except ImportError:
        return None
    return str(mm.get_torch_device())


def environment_report() -> dict[str, str]:
    """Ordered facts about the runtime; values are short strings."""
    cuda = torch.cuda.is_available()
    report = {
        "sf_core": _module_version("sf_core") or "missing",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": f"{torch.version.cuda} ({torch.cuda.get_device_name(0)})" if cuda else "not available",
        "comfy device": _comfy_device() or "not running inside ComfyUI",
        "flex attention": "available" if _flex_attention_available() else "missing",
        "flash-attn": _module_version("flash_attn") or "missing",
        "sageattention": _module_version("sageattention") or "missing",
        "safetensors": _module_version("safetensors") or "missing",
        "sentencepiece": _module_version("sentencepiece") or "missing",
        "av": _module_version("av") or "missing",
    }
    if cuda:
        free, total = torch.cuda.mem_get_info()
        report["gpu memory"] = f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"
    return report


def format_report(report: dict[str, str]) -> str:
    width = max(len(key) for key in report)
    return "\n".join(f"{key.ljust(width)} : {value}" for key, value in report.items())


class SFEnvironmentInfo:
    """Shows versions, device and available attention backends as text."""

    CATEGORY = UTILS
    FUNCTION = "run"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    @classmethod
    def IS_CHANGED(cls):
        return float("nan")  # the environment can change between runs (installs, other models loaded)

    def run(self):
        text = format_report(environment_report())
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"SFEnvironmentInfo": SFEnvironmentInfo}
NODE_DISPLAY_NAME_MAPPINGS = {"SFEnvironmentInfo": "SF Environment Info"}
