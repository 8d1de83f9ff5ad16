"""Host and device memory of a 10-second vs a 10-minute stream through the node run (`nodes/run.py`).

Measured: CPU, tiny random weights (`TINY_GENERATE_DIT` + a small TAEHV), 256×256 by default, ComfyUI
imported in-process in CPU mode; the stream runs exactly as the sampler node runs it (`run_stream`: decode,
mp4 recording, outputs), with a rolling cache (window 9, sink 3). Peak RSS is sampled every 20 ms during
the run, above the RSS before it. The "all frames" row keeps every frame in the outputs (the old
behaviour), for the short stream only — at 10 minutes it would hold GBs.
Computed: device bytes of the KV / cross caches (closed form) and the traced activation peak
(`nodes.memory.stream_bytes`), and the same rows at 1.3B / 832×480 from `sf_core.memory`.

    .cache/comfy-venv/bin/python -m benchmarks.stream_memory [--size 256] [--short 10] [--long 600]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MIB, GIB = 2 ** 20, 2 ** 30


def import_comfy(comfy_dir: Path) -> None:
    """ComfyUI's modules in this process, CPU mode (comfyui.md §14.3); the repository's `nodes` wins."""
    sys.path[:0] = [str(REPO)]
    sys.path.append(str(comfy_dir))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401


class PeakRSS:
    """Peak resident set size above the starting one, sampled in a thread."""

    def __init__(self, every: float = 0.02):
        import psutil
        self.process, self.every, self.peak = psutil.Process(), every, 0
        self.start = self.process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss - self.start)
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def tiny_stream(size: int):
    from nodes.handles import SFContext, SFModel, SFStream, SFVAE
    from sf_core.config import StreamConfig
    from sf_core.model import CausalWanModel
    from sf_core.pipeline import StreamingPipeline
    from sf_core.testing.tiny import TINY_GENERATE_DIT, randomize
    from sf_core.vae.taehv import TAEHV, StreamingTAEHVDecoder

    torch.manual_seed(0)
    config = StreamConfig(chunk_frames=3, window=9, sink=3)
    model = randomize(CausalWanModel(TINY_GENERATE_DIT)).eval()
    vae = SFVAE(StreamingTAEHVDecoder(TAEHV(widths=(16, 16, 8, 8), encoder_width=8).eval()), "tiny taehv")
    context = SFContext(torch.randn(1, TINY_GENERATE_DIT.text_len, TINY_GENERATE_DIT.text_dim))
    state = StreamingPipeline(model, config).start(context.embedding, size, size, seed=0)
    return SFStream(state, SFModel(model, config, "tiny", torch.device("cpu")), vae, context, config, 16.0)


def measure(seconds: float, size: int, keep) -> dict:
    from nodes import memory
    from nodes.run import run_stream
    from nodes.stream import _num_chunks

    stream = tiny_stream(size)
    chunks = _num_chunks(seconds, "seconds", 16.0, stream.vae.frame_counts(3), None)
    need = memory.stream_bytes(stream.model.model, stream.config, stream.vae.decoder, (size // 8, size // 8), 9)
    with torch.inference_mode(), PeakRSS() as rss:
        started = time.perf_counter()
        result = run_stream(stream, chunks, "bench", "mp4", "bench/stream", keep=keep)["result"]
        wall = time.perf_counter() - started
    return {"frames": stream.frames, "chunks": chunks, "rss_peak": rss.peak, "images": result[1].nbytes,
            "device": need["total"], "wall": wall}


def wan_rows(seconds_short: float, seconds_long: float) -> list[str]:
    """1.3B at 832×480, 16 fps, chunks of 3 latents (9 frames, then 12): host bytes of the IMAGE outputs
    (arithmetic) and device peaks (sf_core.memory)."""
    from sf_core.media.timing import chunks_for_frames
    from sf_core.memory import estimate_inference
    frame = 832 * 480 * 3 * 4
    rows = []
    for name, window, sink in (("rolling 21 + sink 3", 21, 3), ("global", -1, 0)):
        for label, seconds in (("10 s", seconds_short), ("10 min", seconds_long)):
            chunks = chunks_for_frames(round(seconds * 16), 9, 12)
            frames, latent = 9 + 12 * (chunks - 1), 3 * chunks
            est = estimate_inference(height=480, width=832, window=window, sink=sink, frames=latent,
                                     decoder="wan", text_encoder="offload")
            rows.append(f"| 1.3B, {name} | {label} ({frames} frames, {latent} latent) | "
                        f"{81 * frame / GIB:.2f} (last 81) · {frames * frame / GIB:.1f} (all) | "
                        f"{est['kv_cache'] / GIB:.1f} | "
                        f"{est['stream_peak'] / GIB:.1f} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--short", type=float, default=10.0, help="seconds of the short stream")
    parser.add_argument("--long", type=float, default=600.0, help="seconds of the long stream")
    parser.add_argument("--comfy", type=Path, default=REPO / ".cache" / "ComfyUI")
    parser.add_argument("--skip-wan", action="store_true", help="no 1.3B rows (their trace takes a minute)")
    args = parser.parse_args(argv)
    import_comfy(args.comfy)
    import folder_paths
    from nodes.run import Keep

    folder_paths.set_output_directory(tempfile.mkdtemp(prefix="sf-bench-"))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    runs = [("last 81 frames (default)", args.short, Keep()), ("last 81 frames (default)", args.long, Keep()),
            ("all frames", args.short, Keep("all"))]
    print(f"| tiny, {args.size}×{args.size}, outputs | stream | frames | peak RSS above start (MiB) | IMAGE output "
          "(MiB) | device: caches + activations (MiB) | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for label, seconds, keep in runs:
        m = measure(seconds, args.size, keep)
        print(f"| {label} | {seconds:g} s | {m['frames']} | {m['rss_peak'] / MIB:.0f} | {m['images'] / MIB:.0f} | "
              f"{m['device'] / MIB:.1f} | {m['wall']:.0f} |", flush=True)
    if not args.skip_wan:
        print("\n| 1.3B, 832×480, cache | stream | host: IMAGE outputs (GiB) | device: KV cache (GiB) | "
              "device: streaming peak (GiB) |")
        print("|---|---|---|---|---|")
        print("\n".join(wan_rows(args.short, args.long)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
