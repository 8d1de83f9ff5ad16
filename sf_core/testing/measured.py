"""Measured peaks to validate `sf_core.memory` against: real tensors on the CPU, resident-set size of this process.

`python -m sf_core.testing.measured dit|wan|taehv` allocates the real module, its inputs and caches (all
written, so every page is resident), resets the high-water mark and records the current RSS, runs one chunk forward / decode, and prints
`{"measured": VmHWM - rss_before, "estimated": <the traced activation peak>}` in bytes. Run it in a
fresh process with `MALLOC_MMAP_THRESHOLD_=65536`, so every large tensor is its own mapping and freed
memory leaves the resident set at once (the RSS then follows live tensor bytes, page-rounded).
"""
from __future__ import annotations

import json
import resource
import sys

import torch

from sf_core import memory
from sf_core.config import ModelConfig

# activations dominate: 12,288 tokens per chunk, an FFN hidden of 4096 (201 MB in float32)
DIT = ModelConfig(dim=512, ffn_dim=4096, num_heads=4, num_layers=2, text_dim=64, text_len=64)
LATENT = (128, 128)
CHUNK, FRAMES = 3, 6
DECODER_LATENT = {"wan": (16, 16), "taehv": (64, 96)}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """VmHWM: the resident-set high-water mark (reset by `reset_peak`)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets the high-water mark to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(fn) -> int:
    """Peak resident bytes `fn()` adds; everything it needs must already be allocated and written."""
    reset_peak()
    before = rss_bytes()
    with torch.no_grad():
        fn()
    return peak_rss_bytes() - before


def measure_dit() -> dict[str, int]:
    from sf_core.cache import KVCache
    from sf_core.model import CausalWanModel
    model = CausalWanModel(DIT).eval()
    h, w = LATENT
    cache = KVCache.allocate(DIT, 1, model.frame_tokens(h, w), FRAMES)
    x, context = torch.randn(1, CHUNK, DIT.in_dim, h, w), torch.randn(1, DIT.text_len, DIT.text_dim)
    t = torch.full((1, CHUNK), 937.5)
    with torch.no_grad():
        model(x, t, context, cache, 0)  # first chunk: the cross cache is filled, as in a stream
        got = measure(lambda: model(x, t, context, cache, CHUNK))
    est = memory.dit_activation_peak(DIT, LATENT, CHUNK, FRAMES, -1, 0, 1, torch.float32)
    return {"measured": got, "estimated": est}


def measure_decoder(kind: str) -> dict[str, int]:
    h, w = DECODER_LATENT[kind]
    _, decoder = memory.decoder_module(kind)
    z = torch.randn(1, CHUNK, 16, h, w)
    decoder.decode_chunk(z)
    got = measure(lambda: decoder.decode_chunk(z))
    return {"measured": got, "estimated": memory.decoder_phase(kind, (h, w), CHUNK, 1, torch.float32)[2]}


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    result = measure_dit() if argv[0] == "dit" else measure_decoder(argv[0])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
