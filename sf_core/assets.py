"""Which files a generation run uses: the user's, or the project's embedded default model.

The embedded default lives in `sf_core/toy/assets/default/` as a `manifest.json` next to its files:

    {"checkpoint": "model.safetensors",
     "text_encoder": {"kind": "toy", "text_dim": 64, "max_len": 24, "seed": 0}   # or {"kind": "umt5", "file": ...}
     "decoder": {"kind": "toy_pixels"},                                        # or {"kind": "file", "file": ...}
     "width": 32, "height": 32, "fps": 8, "chunks": 7, "prompt": "a red circle moves left on a navy background",
     "description": "..."}

Until that trained toy model exists, `default_model()` builds a deterministic *untrained stand-in* (tiny random
DiT, tiny umT5 with its tokenizer, tiny Wan VAE, all in the real file layouts) into a cache folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import save_safetensors
from .config import ModelConfig, StreamConfig
from .model import CausalWanModel
from .tiny_assets import TINY_UMT5, make_tiny_umt5
from .vae import VAEConfig, WanVAE

DEFAULT_ASSETS = Path(__file__).parent / "toy" / "assets" / "default"
MANIFEST = "manifest.json"
STANDIN_VERSION = "standin-v1"
STANDIN_DIT = ModelConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, out_dim=16,
                          text_dim=TINY_UMT5.dim, freq_dim=32, text_len=32)
STANDIN_VAE = VAEConfig(dim=8)
STANDIN_FILES = {"checkpoint": "standin_dit.safetensors", "text_encoder": "standin_umt5.safetensors",
                 "decoder": "standin_wan_vae.safetensors"}


@dataclass
class ModelFiles:
    """Everything a run loads. `text_kind`: "umt5" | "toy"; `decoder_kind`: "vae" | "taehv" | "toy_pixels"."""

    checkpoint: Path
    text_encoder: Path | None = None
    decoder: Path | None = None
    text_kind: str = "umt5"
    decoder_kind: str = "vae"
    toy_text: dict = field(default_factory=dict)     # ToyTextEncoder arguments when text_kind == "toy"
    defaults: dict = field(default_factory=dict)     # width, height, fps, chunks, prompt suggested by the model
    description: str = ""                            # shown to the user, e.g. "untrained stand-in"
    embedded: bool = False


def cache_dir() -> Path:
    """`$SF_CACHE_DIR`, else `$XDG_CACHE_HOME/comfyui-self-forcing`, else `~/.cache/comfyui-self-forcing`."""
    if os.environ.get("SF_CACHE_DIR"):
        return Path(os.environ["SF_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "comfyui-self-forcing"


def default_model(assets: Path | None = None, cache: Path | None = None) -> ModelFiles:
    """The trained toy model if `assets` (default DEFAULT_ASSETS) holds one, else the untrained stand-in
    (built once into `cache`)."""
    assets = assets or DEFAULT_ASSETS
    if (assets / MANIFEST).is_file():
        return from_manifest(assets)
    return build_standin((cache or cache_dir()) / STANDIN_VERSION)


def from_manifest(folder: Path) -> ModelFiles:
    """Read an embedded-model `manifest.json` (format in the module docstring)."""
    spec = json.loads((folder / MANIFEST).read_text())
    text, decoder = spec.get("text_encoder", {"kind": "toy"}), spec.get("decoder", {"kind": "toy_pixels"})
    decoder_kind = decoder["kind"]
    if decoder_kind == "file":
        decoder_kind = "auto"
    keep = ("width", "height", "fps", "chunks", "prompt")
    return ModelFiles(
        checkpoint=folder / spec["checkpoint"],
        text_encoder=folder / text["file"] if "file" in text else None,
        decoder=folder / decoder["file"] if "file" in decoder else None,
        text_kind=text["kind"], decoder_kind=decoder_kind,
        toy_text={k: v for k, v in text.items() if k not in ("kind", "file")},
        defaults={k: spec[k] for k in keep if k in spec},
        description=spec.get("description", f"embedded default model ({folder})"), embedded=True)


def _random_weights(module: torch.nn.Module, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def build_standin(folder: Path) -> ModelFiles:
    """Write (once) and describe the deterministic untrained stand-in in the real file layouts."""
    files = ModelFiles(
        checkpoint=folder / STANDIN_FILES["checkpoint"], text_encoder=folder / STANDIN_FILES["text_encoder"],
        decoder=folder / STANDIN_FILES["decoder"], text_kind="umt5", decoder_kind="vae",
        defaults={"width": 32, "height": 32, "fps": 16, "chunks": 7,
                  "prompt": "A red fox runs through deep snow under a pale winter sky."},
        description=("UNTRAINED STAND-IN (random tiny DiT + tiny umT5 + tiny Wan VAE): the output is noise, "
                     f"not a video model; files in {folder}"),
        embedded=True)
    if all(p.is_file() for p in (files.checkpoint, files.text_encoder, files.decoder)):
        return files
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        dit = CausalWanModel(STANDIN_DIT, attention="sdpa")
        _random_weights(dit, seed=0, scale=0.2)
        save_safetensors(dit, tmp / STANDIN_FILES["checkpoint"], StreamConfig(), STANDIN_DIT)
        make_tiny_umt5(tmp / STANDIN_FILES["text_encoder"], layout="comfy")
        with torch.random.fork_rng():
            torch.manual_seed(1)
            vae = WanVAE(STANDIN_VAE)  # PyTorch's default init, seeded
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp / STANDIN_FILES["decoder"]))
        if folder.exists():          # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


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
