"""Peak device memory of an inference configuration, known before anything is allocated.

Closed form: DiT weights, self-attention KV cache (`2 · layers · B · capacity · dim` elements) and the
cross-attention cache (`2 · layers · B · text_len · dim`). Traced: the activation peaks of one DiT chunk
forward, of one Wan VAE / TAEHV chunk decode and of one umT5 prompt encode, by running the real modules
under `FakeTensorMode` with torch's `MemTracker` (tensors carry shapes only; nothing is allocated — the
technique of torchtitan's memory estimation).

Phases (`total_peak` is the larger):
* prompt encoding: DiT + decoder weights + umT5 weights + its activations (the CLI loads all, then encodes);
* streaming: DiT weights + KV and cross caches + decoder weights and state + the larger of the DiT and
  decoder activation peaks (+ umT5 weights when `text_encoder="resident"`).

Attention: the trace runs PyTorch SDPA on fake CPU tensors, which picks the flash kernel (output plus a
float32 logsumexp, nothing quadratic) — the same footprint as flash-attn / cuDNN / SDPA flash on CUDA.

`python -m sf_core.memory --config wan-1.3b --height 480 --width 832 --window 21 --sink 3 [--json]`
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .config import DTYPES, WAN_1_3B, WAN_14B, ModelConfig

CONFIGS = {"wan-1.3b": WAN_1_3B, "wan-14b": WAN_14B}
DECODERS = ("wan", "taehv")
TEXT_MODES = ("resident", "offload", "cpu")  # offload: on the device only while encoding (the CLI today)
GIB = 1024 ** 3
KEYS = ("weights", "kv_cache", "cross_cache", "activations_peak", "decoder_peak", "text_encoder", "total_peak")


# -- tracing ---------------------------------------------------------------------------------------------
@contextmanager
def fake_mode(allow_non_fake_inputs: bool = False):
    """Tensors created inside are fake CPU tensors: real shapes, dtypes and kernels' outputs, no storage.
    `allow_non_fake_inputs`: real / meta tensors may enter ops (e.g. `to_empty` of a meta module)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode(allow_non_fake_inputs=allow_non_fake_inputs)
    with warnings.catch_warnings(), mode, torch.device("cpu"), torch.no_grad():
        warnings.filterwarnings("ignore", "Accessing the data pointer of FakeTensor")  # cache keys use data_ptr
        yield


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in `dtype` (a fake module cannot be cast afterwards)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class PeakTracker(TorchDispatchMode):
    """Live bytes of every storage created by an op inside the mode (freed when its last tensor dies)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage(), inputs)
        return out

    def _track(self, storage, inputs: set[int]) -> None:
        """Count a storage the op created (an output sharing an input's storage is a view or in place)."""
        key = storage._cdata
        if key in self._seen or key in inputs:
            return
        self._seen.add(key)
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size


def traced_peak(fn) -> int:
    """Peak bytes that `fn()` allocates while it runs (existing tensors are not counted)."""
    tracker = PeakTracker()
    with tracker:
        fn()
    return tracker.peak


def nbytes(module: torch.nn.Module) -> int:
    """Parameter and buffer bytes."""
    return sum(t.numel() * t.dtype.itemsize for t in [*module.parameters(), *module.buffers()])


# -- closed form -----------------------------------------------------------------------------------------
def dit_parameters(config: ModelConfig) -> int:
    """Exact parameter count of the DiT (built on the meta device)."""
    from .model import CausalWanModel
    with torch.device("meta"):
        return sum(p.numel() for p in CausalWanModel(config).parameters())


def cache_frames(window: int, frames: int) -> int:
    """Latent frames the KV cache holds: the window (rolling) or the global length."""
    return window if window != -1 else frames


def kv_cache_bytes(config: ModelConfig, frame_tokens: int, frames: int, batch: int, dtype: torch.dtype) -> int:
    return 2 * config.num_layers * batch * frames * frame_tokens * config.dim * dtype.itemsize


def cross_cache_bytes(config: ModelConfig, batch: int, dtype: torch.dtype) -> int:
    return 2 * config.num_layers * batch * config.text_len * config.dim * dtype.itemsize


# -- traced phases ---------------------------------------------------------------------------------------
def dit_activation_peak(config: ModelConfig, latent_hw: tuple[int, int], chunk_frames: int, capacity: int,
                        window: int, sink: int, batch: int, dtype: torch.dtype) -> int:
    """Peak bytes of one chunk forward above weights, caches and inputs, with the cache full (the chunk
    attends to the whole window: the worst case)."""
    from .cache import KVCache
    from .model import CausalWanModel
    h, w = latent_hw
    with fake_mode():
        with default_dtype(dtype):
            model = CausalWanModel(config)
        ft = model.frame_tokens(h, w)
        cache = KVCache.allocate(config, batch, ft, capacity, window, sink, dtype)
        start = max(capacity - chunk_frames, 0) if window == -1 else capacity
        cache.global_end, cache.local_end = start * ft, min(start, capacity) * ft
        x = torch.empty(batch, chunk_frames, config.in_dim, h, w, dtype=dtype)
        t = torch.full((batch, chunk_frames), 937.5)
        context = torch.empty(batch, config.text_len, config.text_dim, dtype=dtype)
        return traced_peak(lambda: model(x, t, context, cache, start))


def decoder_module(kind: str, config=None):
    """(module, streaming decoder) of the released shapes, or of `config` (a VAEConfig / TAEHV kwargs)."""
    if kind == "wan":
        from .vae.wan import StreamingDecoder, VAEConfig, WanVAE
        vae = WanVAE(config or VAEConfig(), with_encoder=False)
        return vae, StreamingDecoder(vae)
    from .vae.taehv import TAEHV, StreamingTAEHVDecoder
    model = TAEHV(**{**(config or {}), "with_encoder": False})
    return model, StreamingTAEHVDecoder(model)


def decoder_phase(kind: str, latent_hw: tuple[int, int], chunk_frames: int, batch: int,
                  dtype: torch.dtype, config=None) -> tuple[int, int, int]:
    """(weights, causal state after one chunk, activation peak of a later chunk's decode) in bytes."""
    h, w = latent_hw
    with fake_mode():
        with default_dtype(dtype):
            module, decoder = decoder_module(kind, config)
        z = torch.empty(batch, chunk_frames, 16, h, w)
        decoder.decode_chunk(z)  # the first chunk starts the causal state
        state = list(decoder.state_dict().values())
        peak = traced_peak(lambda: decoder.decode_chunk(z))
        return nbytes(module), sum(t.numel() * t.dtype.itemsize for t in state), peak


def text_encoder_phase(dtype: torch.dtype, batch: int = 1, seq_len: int = 512, config=None) -> tuple[int, int]:
    """(umT5 weights, activation peak of one encode) in bytes; `config` defaults to umT5-XXL."""
    from .text.umt5 import UMT5_XXL, UMT5Encoder
    with fake_mode():
        with default_dtype(dtype):
            model = UMT5Encoder(config or UMT5_XXL)
        ids = torch.zeros(batch, seq_len, dtype=torch.long)
        mask = torch.ones(batch, seq_len, dtype=torch.long)
        return nbytes(model), traced_peak(lambda: model(ids, mask))


# -- the estimate ----------------------------------------------------------------------------------------
def estimate_inference(model: ModelConfig = WAN_1_3B, *, height: int = 480, width: int = 832,
                       chunk_frames: int = 3, window: int = -1, sink: int = 0, frames: int = 21, batch: int = 1,
                       dtype: torch.dtype = torch.bfloat16, decoder: str = "wan",
                       decoder_dtype: torch.dtype | None = None, text_encoder: str = "offload",
                       text_dtype: torch.dtype | None = None, decoder_config=None,
                       text_config=None) -> dict[str, int]:
    """Peak device bytes of streaming `model` at height × width pixels (Wan VAE geometry: 8 px per latent).

    Counts are latent frames: `frames` sizes a global cache (`window=-1`); a rolling `window` includes its
    `sink` and the chunk being made. `decoder`: "wan" | "taehv"; `text_encoder`: "resident" (stays on the
    device), "offload" (on the device only while encoding — what the CLI does), "cpu" (never on it).
    Returns integer bytes: weights, kv_cache, cross_cache, activations_peak, decoder_peak (decoder
    weights + state + decode activations), text_encoder (umT5 weights on the device), encode_peak,
    stream_peak, total_peak = max(encode_peak, stream_peak); plus frame_tokens and cache_frames.
    `decoder_config` (VAEConfig / TAEHV kwargs) and `text_config` (UMT5Config) default to the released models.
    """
    check_request(height, width, chunk_frames, window, sink, frames, batch, decoder, text_encoder)
    decoder_dtype, text_dtype = decoder_dtype or dtype, text_dtype or dtype
    latent_hw = (height // 8, width // 8)
    ft = (latent_hw[0] // model.patch_size[1]) * (latent_hw[1] // model.patch_size[2])
    capacity = cache_frames(window, frames)
    out = {"weights": dit_parameters(model) * dtype.itemsize,
           "kv_cache": kv_cache_bytes(model, ft, capacity, batch, dtype),
           "cross_cache": cross_cache_bytes(model, batch, dtype),
           "activations_peak": dit_activation_peak(model, latent_hw, chunk_frames, capacity, window, sink,
                                                   batch, dtype)}
    dec_weights, dec_state, dec_act = decoder_phase(decoder, latent_hw, chunk_frames, batch, decoder_dtype,
                                                   decoder_config)
    out["decoder_peak"] = dec_weights + dec_state + dec_act
    text_weights, text_act = (text_encoder_phase(text_dtype, batch, config=text_config)
                              if text_encoder != "cpu" else (0, 0))
    out["text_encoder"] = text_weights
    out["encode_peak"] = out["weights"] + dec_weights + text_weights + text_act
    out["stream_peak"] = (out["weights"] + out["kv_cache"] + out["cross_cache"] + dec_weights + dec_state
                          + max(out["activations_peak"], dec_act)
                          + (text_weights if text_encoder == "resident" else 0))
    out["total_peak"] = max(out["encode_peak"], out["stream_peak"])
    out["frame_tokens"], out["cache_frames"] = ft, capacity
    return out


class MemoryPlanError(ValueError):
    """A request that cannot be planned, or cannot fit the device."""


def check_request(height, width, chunk_frames, window, sink, frames, batch, decoder, text_encoder) -> None:
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise MemoryPlanError(f"--height/--width must be positive multiples of 16 pixels, got {height}x{width}")
    if min(chunk_frames, frames, batch) < 1:
        raise MemoryPlanError(f"--chunk-frames, --frames and --batch must be >= 1, got "
                              f"{chunk_frames}, {frames}, {batch}")
    if window != -1 and not 0 <= sink < window - chunk_frames + 1:
        raise MemoryPlanError(f"--window {window} must hold --sink {sink} plus one chunk of {chunk_frames} frames")
    if window == -1 and frames < chunk_frames:
        raise MemoryPlanError(f"--frames {frames} is shorter than one chunk ({chunk_frames} latent frames)")
    if decoder not in DECODERS or text_encoder not in TEXT_MODES:
        raise MemoryPlanError(f"--decoder must be one of {DECODERS} and --text-encoder one of {TEXT_MODES}")


# -- fitting a device ------------------------------------------------------------------------------------
def device_free_bytes(device: str | torch.device) -> int | None:
    """Free memory of a CUDA device, or the host's available memory for CPU; None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(estimate: dict[str, int], device: str | torch.device, window: int) -> None:
    """Raise MemoryPlanError with what to change when `total_peak` exceeds the device's free memory."""
    free = device_free_bytes(device)
    need = estimate["total_peak"]
    if free is None or need <= free:
        return
    hints = ["a smaller size", "--decoder tiny"]
    if window == -1:
        hints.insert(0, "--window 21 (a rolling cache)")
    elif window > 3:
        hints.insert(0, f"--window {max(3, window // 2)}")
    raise MemoryPlanError(f"this run needs {need / GIB:.2f} GiB ({describe_largest(estimate)}), the device "
                          f"{device} has {free / GIB:.2f} GiB free; use {' / '.join(hints)}")


def describe_largest(estimate: dict[str, int]) -> str:
    name = max(KEYS[:5], key=lambda k: estimate[k])
    return f"largest part: {name.replace('_', ' ')} {estimate[name] / GIB:.2f} GiB"


# -- the command -----------------------------------------------------------------------------------------
def config_of_checkpoint(path: Path) -> ModelConfig:
    """The DiT shape of a checkpoint (header only for safetensors holding our `sf_model` metadata)."""
    from .weights.checkpoint import load_state_dict, model_config_from
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "sf_model" in meta:
            return ModelConfig.from_json(meta["sf_model"])
    except Exception:  # noqa: BLE001 - not safetensors: read it fully below
        pass
    sd, meta = load_state_dict(path)
    return model_config_from(sd, meta, str(path))


def table(estimate: dict[str, int]) -> str:
    rows = [(k, estimate[k]) for k in KEYS[:6]] + [("encode phase", estimate["encode_peak"]),
                                                   ("stream phase", estimate["stream_peak"]),
                                                   ("total peak", estimate["total_peak"])]
    return "\n".join(f"{k.replace('_', ' '):>18}: {v / GIB:9.3f} GiB  {v:>16,d} B" for k, v in rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sf_core.memory", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="a DiT checkpoint (its shape is read)")
    src.add_argument("--config", choices=sorted(CONFIGS), default="wan-1.3b")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--chunk-frames", type=int, default=3, help="latent frames per chunk")
    p.add_argument("--window", type=int, default=-1, help="rolling window in latent frames (-1: global cache)")
    p.add_argument("--sink", type=int, default=0, help="latent frames pinned in a rolling window")
    p.add_argument("--frames", type=int, default=21, help="latent frames of a global cache")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--decoder", choices=DECODERS, default="wan")
    p.add_argument("--text-encoder", choices=TEXT_MODES, default="offload",
                   help="resident: stays on the device; offload: only while encoding (the CLI); cpu: never")
    p.add_argument("--json", action="store_true", help="print one JSON object of integer byte counts")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = config_of_checkpoint(args.checkpoint) if args.checkpoint else CONFIGS[args.config]
        est = estimate_inference(model, height=args.height, width=args.width, chunk_frames=args.chunk_frames,
                                 window=args.window, sink=args.sink, frames=args.frames, batch=args.batch,
                                 dtype=DTYPES[args.dtype], decoder=args.decoder, text_encoder=args.text_encoder)
    except (MemoryPlanError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(est) if args.json else table(est))
    return 0


if __name__ == "__main__":
    sys.exit(main())
