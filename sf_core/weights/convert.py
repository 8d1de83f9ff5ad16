"""Convert a Wan2.1 / Self Forcing DiT checkpoint between layouts.

    python -m sf_core.weights.convert self_forcing_dmd.pt self_forcing_dmd.safetensors --dtype bf16
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from sf_core.media import outputs
from sf_core.media.outputs import OutputError
from sf_core.weights.checkpoint import (CheckpointError, check_state_dict, dominant_dtype, load_state_dict,
                                model_config_from, save_comfy_native_ar, save_diffusers, save_safetensors)
from sf_core.config import DTYPES, SHORT_DTYPE_NAMES, ConfigError, StreamConfig, short_dtype_name

WRITERS = {"sf": save_safetensors, "comfy-ar": save_comfy_native_ar, "diffusers": save_diffusers}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sf_core.weights.convert",
        description=(
            "Convert a Wan2.1 DiT checkpoint (official Self-Forcing .pt, Wan safetensors single or sharded, "
            "ComfyUI full or diffusion-model file, ComfyUI scaled fp8, diffusers WanTransformer3DModel, "
            "ComfyUI native AR) into one file with bare Wan2.1 keys and the sampling settings stored as "
            "metadata. Only weights-only .pt files are read (torch.load(weights_only=True))."),
        epilog=(
            "Formats: 'sf' = safetensors with bare Wan keys + sf_model/sf_stream metadata (sf_core and "
            "our ComfyUI nodes); 'comfy-ar' = the same plus config={\"transformer\": {\"causal_ar\": true}} "
            "so ComfyUI's UNETLoader + SamplerARVideo run it natively (put it in models/diffusion_models); "
            "'diffusers' = OUTPUT is a folder with config.json + diffusion_pytorch_model.safetensors. "
            "Stream options not given are taken from the input's sf_stream metadata, else the official "
            "Self-Forcing defaults (3-frame chunks, steps 1000,750,500,250, shift 5, global attention)."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="checkpoint file, shard index JSON, or model folder")
    p.add_argument("output", help="output .safetensors file (a folder for --format diffusers)")
    p.add_argument("--format", choices=sorted(WRITERS), default="sf", help="output layout (default: sf)")
    p.add_argument("--dtype", choices=sorted(SHORT_DTYPE_NAMES), default=None,
                   help="output dtype (default: the input's dominant dtype; fp8 inputs are dequantised)")
    s = p.add_argument_group("stream settings (stored as sf_stream metadata)")
    s.add_argument("--chunk-frames", type=int, help="latent frames per chunk (3 chunk-wise, 1 frame-wise)")
    s.add_argument("--steps", help="comma-separated denoising timesteps, e.g. 1000,750,500,250")
    s.add_argument("--no-warp", action="store_true", help="use --steps as given instead of warping them by shift")
    s.add_argument("--shift", type=float, help="flow-matching timestep shift (official: 5)")
    s.add_argument("--window", type=int, help="attention window in latent frames, -1 = global")
    s.add_argument("--sink", type=int, help="latent frames pinned at the start of a rolling cache")
    s.add_argument("--context-noise", type=float, help="timestep of the cache-update pass (official: 0)")
    return p


def _steps(text: str) -> tuple[float, ...]:
    try:
        steps = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--steps: expected comma-separated numbers such as 1000,750,500,250, got {text!r}")
    if not steps or any(not 0 <= t <= 1000 for t in steps):
        raise SystemExit(f"--steps: expected timesteps in [0, 1000], got {text!r}")
    return steps


def stream_config_from_args(args, meta: dict) -> StreamConfig:
    """Input metadata (or defaults) overridden by the options given on the command line."""
    base = StreamConfig.from_metadata(meta) or StreamConfig()
    overrides = {
        "chunk_frames": args.chunk_frames,
        "denoising_steps": _steps(args.steps) if args.steps else None,
        "warp_denoising_step": False if args.no_warp else None,
        "shift": args.shift,
        "window": args.window,
        "sink": args.sink,
        "context_noise": args.context_noise,
    }
    cfg = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if cfg.problems():
        raise SystemExit(f"error: invalid stream settings (options, else the input's sf_stream metadata): "
                         f"{'; '.join(cfg.problems())}")
    if cfg.window != -1 and cfg.window < cfg.chunk_frames + cfg.sink:
        raise SystemExit(f"--window {cfg.window} must be -1 or at least chunk frames + sink "
                         f"({cfg.chunk_frames} + {cfg.sink})")
    return cfg


def convert(args) -> str:
    """Run one conversion; returns the one-line summary."""
    output = Path(args.output)  # checked before the (large) input is read
    if args.format == "diffusers":
        outputs.check_folder("output", output)
    else:
        outputs.check_file("output", output, overwrite=True)
    sd, meta = load_state_dict(args.input)
    model_cfg = model_config_from(sd, meta, args.input)
    check_state_dict(sd, model_cfg, args.input)
    dtype = DTYPES[args.dtype] if args.dtype else dominant_dtype(sd)
    for k in list(sd):
        sd[k] = sd[k].to(dtype)
    stream = stream_config_from_args(args, meta)
    written = WRITERS[args.format](sd, args.output, stream_config=stream, model_config=model_cfg)
    params = sum(v.numel() for v in sd.values())
    settings = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(stream).items() if k != "extra")
    marker = " + config.transformer.causal_ar" if args.format == "comfy-ar" else ""
    return (f"wrote {written} ({args.format}): {len(sd)} tensors, {params:,} params, "
            f"{short_dtype_name(dtype) if dtype in DTYPES.values() else dtype}, from {meta['sf_source_layout']}; "
            f"metadata sf_model (dim {model_cfg.dim}, {model_cfg.num_layers} layers){marker}, "
            f"sf_stream ({settings})")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(convert(args))
    except (CheckpointError, ConfigError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: writing {args.output}: {outputs.reason(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
