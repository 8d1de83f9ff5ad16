"""Rank-0 logging: `metrics.jsonl` (one record per step, truncated on resume so a resumed run's file
equals an uninterrupted run's), TensorBoard when installed, wandb when enabled and installed, tqdm."""
from __future__ import annotations

import json
import sys
from pathlib import Path


class MetricsLogger:
    def __init__(self, out: Path, cfg, enabled: bool):
        self.out, self.cfg, self.enabled = Path(out), cfg, enabled
        self.path = self.out / "metrics.jsonl"
        self.tb = self.wandb = None

    def start(self, step: int) -> None:
        """Open sinks; drop records at or after `step` (written after the checkpoint we resume from)."""
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] < step]
            self.path.write_text("".join(line + "\n" for line in keep))
        log = self.cfg.logging
        if log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=step)
            except ImportError:
                self.note("tensorboard is not installed (pip install tensorboard); logging to metrics.jsonl only")
        if log.wandb:
            try:
                import wandb
                self.wandb = wandb.init(project=log.wandb_project, dir=str(self.out), config=self.cfg.to_dict(),
                                        resume="allow")
            except ImportError:
                self.note("wandb is not installed; logging.wandb ignored")

    def note(self, text: str) -> None:
        if self.enabled:
            print(f"[sf_core.train] {text}", file=sys.stderr, flush=True)

    def progress(self, total: int, initial: int):
        if not (self.enabled and self.cfg.logging.progress):
            return None
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if step % self.cfg.run.log_every:
            return
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
