"""What the stream nodes ask ComfyUI's memory manager for, and what their outputs keep (no ComfyUI needed)."""
from types import SimpleNamespace

import pytest
import torch

from nodes import memory
from nodes.run import Keep, trained_length_warning
from sf_core.config import StreamConfig
from sf_core.pipeline import StreamingPipeline
from sf_core.toy.pixels import PixelDecoder


@pytest.mark.parametrize("window,sink,frames", [(6, 2, 6), (-1, 0, 8)])
def test_requested_cache_bytes_are_the_bytes_the_pipeline_allocates(tiny_model, window, sink, frames):
    config = StreamConfig(chunk_frames=2, window=window, sink=sink)
    state = StreamingPipeline(tiny_model, config).start(torch.randn(1, 16, tiny_model.config.text_dim), 32, 32,
                                                        max_frames=frames)
    need = memory.stream_bytes(tiny_model, config, PixelDecoder(), (state.latent_height, state.latent_width),
                               state.cache.capacity // state.cache.frame_tokens)
    cache = state.cache
    assert need["kv_cache"] == cache.k.nbytes + cache.v.nbytes
    assert need["cross_cache"] == cache.cross_k.nbytes + cache.cross_v.nbytes
    assert need["activations"] > 0 and need["total"] == need["kv_cache"] + need["cross_cache"] + need["activations"]


def test_outputs_keep_the_last_frames_and_their_latents_by_default():
    frames, latents = Keep().tails(frames_per_chunk=12, chunk_frames=3)  # Wan: 12 frames from 3 latents
    assert (frames.limit, latents.limit) == (81, 21)
    assert Keep("all").tails(12, 3)[0].limit is None and Keep("none").tails(12, 3)[1].limit == 0
    assert Keep("last frames", 5).tails(3, 3)[1].limit == 5  # toy pixels: one latent per frame
    with pytest.raises(ValueError, match="outputs must be one of"):
        Keep("some")
    with pytest.raises(ValueError, match="output_frames must be at least 1"):
        Keep("last frames", 0)


@pytest.mark.parametrize("window,chunks,warned", [(-1, 7, False), (-1, 8, True), (9, 20, False)])
def test_report_warns_once_a_global_cache_passes_the_trained_length(tiny_model, window, chunks, warned):
    config = StreamConfig(chunk_frames=3, window=window, sink=0)
    pipe = StreamingPipeline(tiny_model, config)
    state = pipe.start(torch.randn(1, 16, tiny_model.config.text_dim), 32, 32, max_frames=3 * chunks)
    for _ in range(chunks):
        pipe.step(state)
    stream = SimpleNamespace(state=state)
    warning = trained_length_warning(stream)
    assert (warning is not None) == warned
    if warned:
        assert warning.startswith("warning: the global KV cache holds 24 latent frames, past the 21") and \
            "cache_window" in warning
