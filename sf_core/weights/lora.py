"""LoRA files for the Wan2.1 DiT (and, where a file has them, the umT5 text encoder): read, match, check.

Formats (each layer is down A [r, in], up B [out, r]; delta W = scale·B·A):
* kohya / ComfyUI: `<prefix><module>.lora_down.weight`, `.lora_up.weight`, optional `.alpha` (scale alpha / r),
  module names Wan-style (`diffusion_model.blocks.0.self_attn.q`) or underscored (`lora_unet_blocks_0_self_attn_q`);
* diffusers / PEFT: `.lora_A.weight`, `.lora_B.weight` (also `.lora_A.default.weight`), Wan or diffusers module
  names (`transformer.blocks.0.attn1.to_q`), scale 1 unless the file has `.alpha` keys;
* ours (`sf_core.train` LoRA export): `blocks.0.self_attn.q.lora_a` / `.lora_b` with metadata `sf_lora`
  = {"alpha": a, "rank": r} (scale a / r, the training scale).

A module name matches a model layer when one of its dotted or underscored tails is that layer's name
(Wan or diffusers spelling, dots or underscores), so any prefix is accepted.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sf_core.weights.checkpoint import _rename
from sf_core.weights.files import WeightsError, few, read_state_dict

META_KEY = "sf_lora"
_SUFFIXES = (  # key ending -> part
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_a", "down"), (".lora_b", "up"), (".alpha", "alpha"),
)
_TEXT_HINT = re.compile(r"(^|[._])(lora_te\d*|te\d?|text_encoders?|t5(xxl)?|umt5)[._]", re.IGNORECASE)


class LoRAError(WeightsError):
    """A LoRA file cannot be applied to this model."""


@dataclass
class LoRALayer:
    down: torch.Tensor      # [r, in]
    up: torch.Tensor        # [out, r]
    scale: float            # alpha / r (1 without alpha)

    def delta(self) -> torch.Tensor:
        """scale·up·down in float32, [out, in]."""
        return (self.up.float() @ self.down.float()) * self.scale


@dataclass
class LoRA:
    name: str
    layers: dict[str, LoRALayer]                    # DiT layer name -> layer
    text_layers: dict[str, LoRALayer] = field(default_factory=dict)   # text-encoder layer name -> layer
    unmatched: list[str] = field(default_factory=list)                # file keys that match no layer

    def report(self) -> str:
        """One line: what was found, what matched nothing (by name)."""
        line = f"LoRA {self.name}: {len(self.layers)} DiT layer(s)"
        if self.text_layers:
            line += f", {len(self.text_layers)} text-encoder layer(s)"
        if self.unmatched:
            line += f"; {len(self.unmatched)} key(s) match no layer and are ignored: {few(self.unmatched)}"
        return line


def _aliases(model: nn.Module, extra=lambda name: ()) -> dict[str, str]:
    """Every spelling of every nn.Linear name of `model` (dots or underscores, plus `extra` spellings) -> name."""
    table = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            for spelling in (name, *extra(name)):
                table[spelling] = table[spelling.replace(".", "_")] = name
    return table


def _diffusers_name(name: str) -> tuple[str, ...]:
    renamed = _rename(name + ".weight", to_diffusers=True)
    return (renamed[: -len(".weight")],) if renamed else ()


def _umt5_names(name: str) -> tuple[str, ...]:
    from sf_core.text.encoder import official_to_comfy_key
    try:
        return (official_to_comfy_key(name + ".weight")[: -len(".weight")],)
    except (KeyError, ValueError):
        return ()


def _match(path: str, table: dict[str, str]) -> str | None:
    """The layer whose spelling is a tail of `path` (cut at a '.' or '_'), the longest tail first."""
    for i in [0] + [j + 1 for j, c in enumerate(path) if c in "._"]:
        if path[i:] in table:
            return table[path[i:]]
    return None


def _split(key: str) -> tuple[str, str] | None:
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _grouped(sd: dict[str, torch.Tensor], source: str):
    """module path -> {"down", "up", "alpha"} tensors, module path -> its file keys, and the other keys."""
    groups, keys, other = {}, {}, []
    for key, value in sd.items():
        split = _split(key)
        if split is None:
            other.append(key)
        else:
            groups.setdefault(split[0], {})[split[1]] = value
            keys.setdefault(split[0], []).append(key)
    if not groups:
        raise LoRAError(f"{source}: no LoRA keys (expected names ending in .lora_down.weight / .lora_up.weight, "
                        f".lora_A.weight / .lora_B.weight or .lora_a / .lora_b); first keys: {few(sorted(sd))}")
    return groups, keys, other


def _layer(path: str, parts: dict[str, torch.Tensor], linear: nn.Linear, name: str, alpha: float | None,
           source: str) -> LoRALayer:
    if "down" not in parts or "up" not in parts:
        raise LoRAError(f"{source}: layer {path!r} has only {sorted(parts)}; a LoRA layer needs both down and up")
    down, up = parts["down"], parts["up"]
    if (down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]
            or (up.shape[0], down.shape[1]) != (linear.out_features, linear.in_features)):
        raise LoRAError(f"{source}: layer {path!r} has down {list(down.shape)} and up {list(up.shape)}, but the "
                        f"model's {name} is [{linear.out_features}, {linear.in_features}] (out, in): this LoRA is "
                        "for another model")
    if "alpha" in parts:
        alpha = float(parts["alpha"].float().reshape(-1)[0])
    return LoRALayer(down, up, 1.0 if alpha is None else alpha / down.shape[0])


def _metadata(path: Path) -> dict:
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get(META_KEY, "{}"))


def read_lora(path: str | Path, model: nn.Module, text_model: nn.Module | None = None) -> LoRA:
    """Read a LoRA file and match it to `model` (a CausalWanModel) and optionally `text_model` (a UMT5Encoder).

    Wrong shapes are refused (with both shapes); keys that match no layer are listed in `unmatched`;
    a file that matches nothing at all is refused."""
    path = Path(path)
    source = str(path)
    sd = read_state_dict(path)
    alpha = _metadata(path).get("alpha")
    groups, keys, other = _grouped(sd, source)
    dit = _aliases(model, _diffusers_name)
    text = _aliases(text_model, _umt5_names) if text_model is not None else {}
    lora = LoRA(path.stem, {}, {}, other)
    for module_path, parts in groups.items():
        name = None if _TEXT_HINT.search(module_path) else _match(module_path, dit)
        if name is not None:
            lora.layers[name] = _layer(module_path, parts, model.get_submodule(name), name, alpha, source)
        elif (name := _match(module_path, text)) is not None:
            lora.text_layers[name] = _layer(module_path, parts, text_model.get_submodule(name), name, alpha, source)
        else:
            lora.unmatched.extend(keys[module_path])
    if not lora.layers and not lora.text_layers:
        raise LoRAError(f"{source}: none of its {len(sd)} keys matches a layer of the model (e.g. "
                        f"{few(sorted(groups), 2)}); expected Wan2.1 DiT names such as "
                        "'diffusion_model.blocks.0.self_attn.q.lora_down.weight'")
    return lora
