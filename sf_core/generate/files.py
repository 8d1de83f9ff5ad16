"""Which files a generation run uses: the user's, or a model bundle folder such as the embedded default.

A bundle folder holds a `manifest.json` next to its files; the embedded default model
(`sf_core/toy/assets/default`) is one:

    {"checkpoint": "model.safetensors",
     "text_encoder": {"kind": "toy", "text_dim": 64, "max_len": 24, "seed": 0},   # or {"kind": "umt5", "file": ...}
     "decoder": {"kind": "toy_autoencoder", "file": "decoder.safetensors"},     # or {"kind": "vae", "file": ...}
     "width": 64, "height": 64, "fps": 16, "chunks": 16, "prompt": "a red circle moves left on a navy background",
     "description": "..."}

Component kinds (text encoder: `umt5`, `toy`; decoder: `vae`, `taehv`, `auto`, `toy_pixels`,
`toy_autoencoder`) are loaded by
`sf_core.generate.bundle`; a kind's options are the entry's other keys.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ASSETS = Path(__file__).parents[1] / "toy" / "assets" / "default"
MANIFEST = "manifest.json"
WAN_DEFAULTS = {"width": 832, "height": 480, "fps": 16, "chunks": 7}  # 7 chunks = 21 latent frames = 81 frames


@dataclass
class ModelFiles:
    """Everything a run loads: files, and the kind of each component (see the module docstring)."""

    checkpoint: Path
    text_encoder: Path | None = None
    decoder: Path | None = None
    text_kind: str = "umt5"
    decoder_kind: str = "vae"
    text_options: dict = field(default_factory=dict)  # keyword arguments of the text-encoder kind
    defaults: dict = field(default_factory=lambda: dict(WAN_DEFAULTS))  # width, height, fps, chunks, prompt
    description: str = ""                            # shown to the user
    embedded: bool = False


def default_model(assets: Path | None = None) -> ModelFiles:
    """The embedded default model (`DEFAULT_ASSETS`, or the bundle folder `assets`)."""
    folder = assets or DEFAULT_ASSETS
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(f"{folder / MANIFEST}: the embedded default model is missing from this checkout; "
                                "restore sf_core/toy/assets/default (git checkout) or give model files")
    return from_manifest(folder)


def from_manifest(folder: Path) -> ModelFiles:
    """Read a bundle folder's `manifest.json` (format in the module docstring)."""
    spec = json.loads((folder / MANIFEST).read_text())
    text, decoder = spec["text_encoder"], spec["decoder"]
    keep = ("width", "height", "fps", "chunks", "prompt")
    return ModelFiles(
        checkpoint=folder / spec["checkpoint"],
        text_encoder=folder / text["file"] if "file" in text else None,
        decoder=folder / decoder["file"] if "file" in decoder else None,
        text_kind=text["kind"], decoder_kind=decoder["kind"],
        text_options={k: v for k, v in text.items() if k not in ("kind", "file")},
        defaults={k: spec[k] for k in keep if k in spec},
        description=spec.get("description", f"model bundle {folder}"), embedded=True)


# ---------------------------------------------------------------------------------------------------
# The real files, in a ComfyUI-style models folder

# role -> (sub-folder, accepted names in order of preference, (Hugging Face repo, file) fetched by --download)
OFFICIAL_FILES = {
    "checkpoint": ("diffusion_models", ("self_forcing_dmd.safetensors", "self_forcing_dmd.pt"),
                   ("gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt")),
    "text_encoder": ("text_encoders", ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "umt5_xxl_fp16.safetensors",
                                       "models_t5_umt5-xxl-enc-bf16.pth"),
                     ("Comfy-Org/Wan_2.1_ComfyUI_repackaged",
                      "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors")),
    "vae": ("vae", ("wan_2.1_vae.safetensors", "Wan2.1_VAE.pth"),
            ("Comfy-Org/Wan_2.1_ComfyUI_repackaged", "split_files/vae/wan_2.1_vae.safetensors")),
    "taehv": ("vae_approx", ("taew2_1.safetensors", "lighttaew2_1.safetensors", "taew2_1.pth"),
              ("madebyollin/taehv", "taew2_1.pth")),
}


def find_in_models_dir(models_dir: Path, role: str) -> Path | None:
    """The first of the usual file names for `role` present under `models_dir/<sub-folder>/`."""
    folder, names, _ = OFFICIAL_FILES[role]
    return next((models_dir / folder / n for n in names if (models_dir / folder / n).is_file()), None)


def download_official(models_dir: Path, role: str) -> Path:
    """Fetch the usual file for `role` from Hugging Face into `models_dir/<sub-folder>/` (only on request)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise RuntimeError("--download needs huggingface-hub: pip install huggingface-hub") from None
    folder, _, (repo, name) = OFFICIAL_FILES[role]
    target = models_dir / folder / Path(name).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        got = hf_hub_download(repo_id=repo, filename=name, local_dir=tmp)
        os.replace(got, target)
    return target
