"""`python -m sf_core.train --config FILE [key.sub=value ...]` (also under `torchrun`);
`python -m sf_core.train encode --config FILE` fills the text-embedding cache for all prompts;
`python -m sf_core.train export --config FILE [--checkpoint DIR] --out FILE` exports a checkpoint's generator;
`python -m sf_core.train estimate --config FILE --world-size N [--json]` prints the per-rank peak memory."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("train", "export", "encode", "estimate") else "train"
    parser = argparse.ArgumentParser(prog="python -m sf_core.train", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML or TOML training config")
    if command == "export":
        parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the run's latest)")
        parser.add_argument("--out", required=True, help="output .safetensors")
        parser.add_argument("--lora", action="store_true",
                            help="write only the LoRA adapters (for generate --lora / SF LoRA), not merged weights")
    if command == "estimate":
        parser.add_argument("--world-size", type=int, required=True, help="number of ranks (GPUs)")
        parser.add_argument("--json", action="store_true", help="one JSON object of integer byte counts")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. optim.lr_generator=1e-5")
    args = parser.parse_args(argv)

    from .config import TrainConfigError, load_config
    try:
        cfg = load_config(args.config, args.overrides, check_files=command != "estimate")
    except TrainConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if command == "export":
        return _export(cfg, args.checkpoint, args.out, args.lora)
    if command == "estimate":
        from .estimate import main_estimate
        return main_estimate(cfg, args.world_size, args.json)
    if command == "encode":
        import json

        from .loop import encode_prompts
        print(json.dumps({"encoded_prompts": encode_prompts(cfg)}))
        return 0
    from .loop import main_train
    main_train(cfg)
    return 0


def _export(cfg, checkpoint, out, lora_only: bool = False) -> int:
    import json
    from pathlib import Path

    import torch
    from safetensors import safe_open

    from sf_core.config import ConfigError, infer_config

    from .checkpointing import export_from_checkpoint, latest_checkpoint
    from sf_core.config import DTYPES
    path = Path(checkpoint) if checkpoint else latest_checkpoint(Path(cfg.run.output_dir) / "checkpoints")
    if path is None:
        print(f"no checkpoint found under {cfg.run.output_dir}/checkpoints", file=sys.stderr)
        return 2
    if lora_only:
        return _export_lora(cfg, path, out)
    with safe_open(str(path / "generator.safetensors"), "pt") as f:  # shapes only, LoRA names folded
        shapes = {k.replace(".base.", "."): f.get_slice(k).get_shape() for k in f.keys() if "lora_" not in k}
    try:
        model_config = infer_config({k: torch.empty(s, device="meta") for k, s in shapes.items()}, str(path))
    except ConfigError:
        model_config = cfg.model_config()  # head size other than 128: the config's own shape
    scale = cfg.lora.alpha / cfg.lora.rank if cfg.lora.enabled else None
    export_from_checkpoint(path, out, model_config, cfg.stream_config(), scale, DTYPES[cfg.model.dtype])
    print(json.dumps({"exported": str(out), "from": str(path)}))
    return 0


def _export_lora(cfg, path, out) -> int:
    import json

    from sf_core.config import DTYPES

    from .checkpointing import load_ema_state, read_tensors
    from .lora import export_lora
    if not cfg.lora.enabled:
        print("--lora: this config trains no LoRA (lora.enabled is false)", file=sys.stderr)
        return 2
    sd, _ = read_tensors(path / "generator.safetensors")
    export_lora(sd, load_ema_state(path), out, cfg.lora.alpha, cfg.lora.rank, DTYPES[cfg.model.dtype])
    print(json.dumps({"exported": str(out), "from": str(path), "lora": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
