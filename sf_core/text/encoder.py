"""umT5 text encoder: loading (ComfyUI safetensors, scaled fp8, official Wan .pth) and prompt encoding.

Layouts (see formats.md §3):
- ComfyUI `umt5_xxl_*.safetensors` — Hugging Face `UMT5EncoderModel` names (`shared.weight`, `encoder.block.i...`),
  the SentencePiece model embedded as the uint8 tensor `spiece_model`, optionally scaled fp8 (`scaled_fp8` marker,
  fp8 Linear weights with a float32 `<layer>.scale_weight`; dequantised weight = fp8 weight * scale_weight).
- official `models_t5_umt5-xxl-enc-bf16.pth` — Wan `T5Encoder` names, tokenizer in `google/umt5-xxl/spiece.model`.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sf_core.weights.files import WeightsError, check_state_dict, load_torch_file, shapes_of
from sf_core.text.tokenizer import TokenizerError, UMT5Tokenizer, find_spiece_model
from sf_core.text.fp8 import LINEAR_WEIGHT, SCALE_SUFFIX, scale_key, swap_in_fp8_linears
from sf_core.text.umt5 import UMT5Config, UMT5Encoder

SPIECE_KEY = "spiece_model"
SCALED_FP8_KEY = "scaled_fp8"
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

# Official Wan name -> ComfyUI / Hugging Face name.
_TOP_KEYS = {
    "token_embedding.weight": "shared.weight",
    "norm.weight": "encoder.final_layer_norm.weight",
}
# Same, for names inside `blocks.{i}.` / `encoder.block.{i}.`.
_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_COMFY_TO_OFFICIAL_TOP = {v: k for k, v in _TOP_KEYS.items()}
_COMFY_TO_OFFICIAL_BLOCK = {v: k for k, v in _BLOCK_KEYS.items()}
# ComfyUI keys that carry no weight of their own (tied embedding copy, fp8 bookkeeping, tokenizer).
_COMFY_AUX = re.compile(r"^(spiece_model|scaled_fp8|encoder\.embed_tokens\.weight|.*\.scale_(weight|input))$")


class TextEncoderError(WeightsError):
    """A text-encoder file is missing, unreadable or not a umT5 encoder."""


def official_to_comfy_key(key: str) -> str:
    """`blocks.3.attn.q.weight` -> `encoder.block.3.layer.0.SelfAttention.q.weight`."""
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    _, index, rest = key.split(".", 2)
    return f"encoder.block.{index}.{_BLOCK_KEYS[rest]}"


def comfy_to_official_key(key: str) -> str | None:
    """Inverse of `official_to_comfy_key`; None for names that are not umT5 encoder weights."""
    if key in _COMFY_TO_OFFICIAL_TOP:
        return _COMFY_TO_OFFICIAL_TOP[key]
    match = re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", key)
    if match and match.group(2) in _COMFY_TO_OFFICIAL_BLOCK:
        return f"blocks.{match.group(1)}.{_COMFY_TO_OFFICIAL_BLOCK[match.group(2)]}"
    return None


class _SafetensorsView(Mapping):
    """Lazy read-only mapping over an open safetensors file."""

    def __init__(self, handle):
        self._handle = handle
        self._keys = list(handle.keys())
        self._key_set = set(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@contextmanager
def _open_tensors(path: Path) -> Iterator[Mapping[str, torch.Tensor]]:
    if not path.is_file():
        raise FileNotFoundError(f"text encoder file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
        try:
            with safe_open(str(path), framework="pt") as handle:
                yield _SafetensorsView(handle)
        except SafetensorError as exc:
            raise TextEncoderError(f"{path}: unreadable safetensors file ({exc}); it may be truncated or corrupt, "
                                   "download it again") from exc
        return
    obj = load_torch_file(path, TextEncoderError)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TextEncoderError(f"{path}: expected a flat dict of tensors (official models_t5_umt5-xxl-enc-bf16.pth "
                               f"layout), got {type(obj).__name__}")
    yield obj


def _weight(tensors: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype) -> torch.Tensor:
    """Read one tensor; fp8 weights are multiplied by their `scale_weight` (default 1) in float32, then cast."""
    tensor = tensors[key]
    if tensor.dtype in FP8_DTYPES:
        tensor = tensor.float()
        if scale_key(key) in tensors:
            tensor = tensor * tensors[scale_key(key)].float()
    return tensor.to(dtype).contiguous()


def _stored_fp8(tensors: Mapping[str, torch.Tensor], key: str, official: str) -> dict[str, torch.Tensor]:
    """An fp8 linear weight as stored plus its float32 scale (1 when the file has none), under official names."""
    scale = tensors[scale_key(key)].float() if scale_key(key) in tensors else torch.ones(())
    return {official: tensors[key].contiguous(), scale_key(official): scale}


def read_umt5_file(path: str | Path, dtype: torch.dtype | None = None, keep_fp8: bool = False
                   ) -> tuple[dict[str, torch.Tensor], bytes | None]:
    """Read a umT5 encoder file in either layout.

    Returns the state dict under official Wan names (fp8 dequantised; everything cast to `dtype`, by default the
    dtype of the final norm) and the embedded SentencePiece model bytes (None if the file has none). With
    `keep_fp8`, fp8 linear weights stay fp8, each with its `<layer>.scale_weight` (see `sf_core.text.fp8`).
    """
    path = Path(path)
    with _open_tensors(path) as tensors:
        keys = list(tensors)
        if "shared.weight" in tensors or "encoder.final_layer_norm.weight" in tensors:
            names, unknown = {}, []
            for key in keys:
                official = comfy_to_official_key(key)
                if official is not None:
                    names[key] = official
                elif not _COMFY_AUX.match(key):
                    unknown.append(key)
            norm_key = "encoder.final_layer_norm.weight"
        elif "token_embedding.weight" in tensors or "norm.weight" in tensors:
            names = {k: k for k in keys if k not in (SPIECE_KEY, SCALED_FP8_KEY) and not k.endswith("scale_weight")}
            unknown = []
            norm_key = "norm.weight"
        else:
            raise TextEncoderError(
                f"{path}: not a umT5 text encoder: found neither 'shared.weight' (ComfyUI layout) nor "
                f"'token_embedding.weight' (official Wan layout); first keys: {sorted(keys)[:5]}")
        if unknown:
            raise TextEncoderError(f"{path}: unexpected keys for a umT5 encoder: {sorted(unknown)[:8]}")
        if norm_key not in tensors:
            raise TextEncoderError(f"{path}: final norm '{norm_key}' missing")
        dtype = dtype or tensors[norm_key].dtype  # ComfyUI's rule for the unquantised dtype
        state_dict = {}
        for key, official in names.items():
            if keep_fp8 and tensors[key].dtype in FP8_DTYPES and LINEAR_WEIGHT.match(official):
                state_dict.update(_stored_fp8(tensors, key, official))
            else:
                state_dict[official] = _weight(tensors, key, dtype)
        spiece = tensors[SPIECE_KEY].numpy().tobytes() if SPIECE_KEY in tensors else None
    _check_state_dict({k: v for k, v in state_dict.items() if not k.endswith(SCALE_SUFFIX)}, str(path),
                      comfy=norm_key.startswith("encoder."))
    return state_dict, spiece


def infer_umt5_config(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> UMT5Config:
    """Read a `UMT5Config` off official-name shapes (`max_distance` and `eps` are not stored; defaults apply)."""
    needed = ["token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.pos_embedding.embedding.weight",
              "blocks.0.ffn.fc1.weight"]
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise TextEncoderError(f"{source}: umT5 keys missing: {missing} (official names; the ComfyUI names are "
                               f"{[official_to_comfy_key(k) for k in missing]})")
    vocab_size, dim = state_dict["token_embedding.weight"].shape
    num_buckets, num_heads = state_dict["blocks.0.pos_embedding.embedding.weight"].shape
    inner = state_dict["blocks.0.attn.q.weight"].shape[0]
    if inner % num_heads:
        raise TextEncoderError(f"{source}: attention width {inner} is not a multiple of {num_heads} heads")
    layers = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")}
    if layers != set(range(len(layers))):
        raise TextEncoderError(f"{source}: block indices are not contiguous: {sorted(layers)}")
    return UMT5Config(vocab_size=int(vocab_size), dim=int(dim), num_layers=len(layers), num_heads=int(num_heads),
                      head_dim=int(inner) // int(num_heads),
                      ffn_dim=int(state_dict["blocks.0.ffn.fc1.weight"].shape[0]), num_buckets=int(num_buckets))


def _check_state_dict(state_dict: Mapping[str, torch.Tensor], source: str, comfy: bool) -> None:
    """Check against the inferred umT5's shapes; names are shown in the file's own layout."""
    config = infer_umt5_config(state_dict, source)
    with torch.device("meta"):
        expected = shapes_of(UMT5Encoder(config))

    def shown(key: str) -> str:
        try:
            return official_to_comfy_key(key) if comfy else key
        except KeyError:
            return key
    check_state_dict({shown(k): v for k, v in state_dict.items()}, {shown(k): s for k, s in expected.items()},
                     source, f"a {config.num_layers}-layer umT5 encoder", TextEncoderError)


def build_umt5(state_dict: Mapping[str, torch.Tensor]) -> UMT5Encoder:
    """An eval-mode, grad-free `UMT5Encoder` holding the given (official-name) tensors without copying them
    (linears with a `scale_weight` keep their fp8 weights: `sf_core.text.fp8`)."""
    with torch.device("meta"):
        model = UMT5Encoder(infer_umt5_config(state_dict))
        swap_in_fp8_linears(model, state_dict)
    model.load_state_dict(state_dict, assign=True)
    return model.eval().requires_grad_(False)


def load_tokenizer(weights_path: str | Path, embedded: bytes | None, tokenizer: str | Path | None,
                   seq_len: int = 512) -> UMT5Tokenizer:
    """Tokenizer from `tokenizer` if given, else the file's `spiece_model`, else a folder next to the weights."""
    if tokenizer is not None:
        return UMT5Tokenizer.from_path(tokenizer, seq_len)
    if embedded is not None:
        return UMT5Tokenizer(embedded, seq_len, source=f"{weights_path}['{SPIECE_KEY}']")
    folder = Path(weights_path).parent
    try:
        return UMT5Tokenizer.from_path(find_spiece_model(folder), seq_len)
    except TokenizerError as exc:
        raise TokenizerError(
            f"{weights_path}: no tokenizer: the file has no '{SPIECE_KEY}' key and none was found next to it "
            f"({exc}). Pass tokenizer=<spiece.model or the google/umt5-xxl folder>.") from exc


class TextEncoder:
    """Prompts -> umT5 embeddings `[B, seq_len, dim]`, zero past each prompt's length, with an LRU cache.

    `device` is where the encoder runs and where results are returned. With `offload=True` the weights stay on
    the CPU and visit `device` only while encoding.
    """

    def __init__(self, model: UMT5Encoder, tokenizer: UMT5Tokenizer, device: str | torch.device = "cpu",
                 offload: bool = False, cache_size: int = 16):
        if tokenizer.vocab_size > model.config.vocab_size:
            raise TokenizerError(f"{tokenizer.source}: tokenizer has {tokenizer.vocab_size} pieces but the encoder "
                                 f"embeds only {model.config.vocab_size}; tokenizer and weights do not belong together")
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.offload = offload
        self.model = model.to("cpu" if offload else self.device)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> [seq_len, dim]

    @classmethod
    def load(cls, path: str | Path, tokenizer: str | Path | None = None, dtype: torch.dtype | None = torch.bfloat16,
             device: str | torch.device = "cpu", offload: bool = False, cache_size: int = 16,
             seq_len: int = 512, keep_fp8: bool = False) -> "TextEncoder":
        """Load a ComfyUI `umt5_xxl_*.safetensors` (fp8 included) or official `.pth`; `dtype=None` keeps the file's.
        `keep_fp8`: a scaled-fp8 file's linear weights stay fp8 in memory (same outputs, about half the bytes)."""
        state_dict, embedded = read_umt5_file(path, dtype, keep_fp8)
        tok = load_tokenizer(path, embedded, tokenizer, seq_len)
        return cls(build_umt5(state_dict), tok, device=device, offload=offload, cache_size=cache_size)

    @property
    def dim(self) -> int:
        return self.model.config.dim

    @property
    def dtype(self) -> torch.dtype:
        return self.model.token_embedding.weight.dtype

    def to(self, device: str | torch.device) -> "TextEncoder":
        self.device = torch.device(device)
        if not self.offload:
            self.model.to(self.device)
        self._cache.clear()
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    def truncation(self, prompt: str) -> str | None:
        """A note when `prompt` is cut to the tokenizer's length (sf_core.text.limits), else None."""
        return self.tokenizer.truncation(prompt)

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        """Embeddings `[B, seq_len, dim]` in the encoder's dtype on `device`; rows past EOS are exactly 0."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("TextEncoder.encode needs at least one prompt (an empty string is a valid prompt)")
        found = {p: self._cache[p] for p in prompts if p in self._cache}
        todo = [p for p in dict.fromkeys(prompts) if p not in found]
        if todo:
            found.update(zip(todo, (row.clone() for row in self._run(todo))))
        for prompt in dict.fromkeys(prompts):
            self._remember(prompt, found[prompt])
        return torch.stack([found[p] for p in prompts])

    def _remember(self, prompt: str, embedding: torch.Tensor) -> None:
        if self.cache_size <= 0:
            return
        self._cache[prompt] = embedding
        self._cache.move_to_end(prompt)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _run(self, prompts: list[str]) -> torch.Tensor:
        """Encode, then zero rows past each length. Columns that are padding in every row are not computed: they
        are masked as keys and zeroed as outputs, so dropping them changes the result only at rounding level."""
        ids, mask = self.tokenizer(prompts)  # [B, seq_len], [B, seq_len]
        used = int(mask.sum(dim=1).max())
        ids, mask = ids[:, :used].to(self.device), mask[:, :used].to(self.device)
        if self.offload:
            self.model.to(self.device)
        try:
            out = self.model(ids, mask)  # [B, used, D]
        finally:
            if self.offload:
                self.model.to("cpu")
        out = out.masked_fill(~mask.bool()[..., None], 0.0)
        return torch.nn.functional.pad(out, (0, 0, 0, self.tokenizer.seq_len - used))  # [B, seq_len, D]
