"""Pure helpers of the stream nodes (no ComfyUI needed): context bridging, config overrides, cache growth."""
import pytest
import torch

from nodes.handles import SFContext, SFVAE, fit_context
from nodes.loaders import SFConditioningToContext
from nodes.stream import stream_config_for
from sf_core.toy.pixels import PixelDecoder
from sf_core.config import StreamConfig
from sf_core.pipeline import StreamingPipeline
from sf_core.media.timing import chunk_frame_counts


def test_fit_context_truncates_and_zero_pads_to_512():
    long, short = torch.randn(1, 600, 8), torch.randn(2, 10, 8)
    assert torch.equal(fit_context(long), long[:, :512])
    padded = fit_context(short)
    assert padded.shape == (2, 512, 8) and torch.equal(padded[:, :10], short) and not padded[:, 10:].any()
    with pytest.raises(ValueError, match="batch, tokens, dim"):
        fit_context(torch.zeros(4, 8))


def test_conditioning_bridge_takes_the_first_embedding_and_needs_clip_to_switch():
    embedding = torch.randn(1, 77, 16)
    (context,) = SFConditioningToContext().convert([[embedding, {"pooled_output": None}]])
    assert context.embedding.shape == (1, 512, 16) and torch.equal(context.embedding[:, :77], embedding)
    with pytest.raises(ValueError, match="give 'SF Conditioning To Context' the CLIP"):
        context.encode_prompt("a dog")
    with pytest.raises(ValueError, match="CLIPTextEncode"):
        SFConditioningToContext().convert([])


def test_context_encodes_with_the_batch_of_the_stream():
    context = SFContext(torch.zeros(2, 512, 4), "a", lambda text: torch.full((1, 512, 4), float(len(text))))
    assert context.encode_prompt("abc").shape == (2, 512, 4) and context.encode_prompt("abc")[1, 0, 0] == 3


def test_stream_config_overrides_and_readable_errors():
    base = StreamConfig(window=12, sink=3)
    assert stream_config_for(base, 0, 0, 0, -1) == base
    changed = stream_config_for(base, 1, 2, -1, -1)
    assert (changed.chunk_frames, changed.denoising_steps, changed.window, changed.sink) == (1, (1000.0, 500.0), -1, 0)
    assert stream_config_for(base, 0, 4, 0, -1).denoising_steps == (1000.0, 750.0, 500.0, 250.0)
    with pytest.raises(ValueError, match="window of at least 7"):
        stream_config_for(base, 4, 0, 6, 3)
    with pytest.raises(ValueError, match="sink needs a rolling window"):
        stream_config_for(StreamConfig(), 0, 0, 0, 2)


def test_growing_a_global_cache_continues_exactly(tiny_model):
    config = StreamConfig(chunk_frames=2, denoising_steps=(1000.0, 500.0))
    pipe = StreamingPipeline(tiny_model, config)
    context = torch.randn(1, 16, tiny_model.config.text_dim)
    long = pipe.start(context, 32, 32, seed=3, max_frames=8)
    reference = [pipe.step(long).latents for _ in range(4)]
    short = pipe.start(context, 32, 32, seed=3, max_frames=4)
    got = [pipe.step(short).latents for _ in range(2)]
    short.cache.reserve(8)
    assert short.cache.capacity == long.cache.capacity
    got += [pipe.step(short).latents for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(got, reference))


def test_chunk_count_counts_the_start_image_frames():
    from nodes.stream import _num_chunks
    n = chunk_frame_counts(3)  # a fresh stream: 9 frames, then 12 per chunk
    assert [_num_chunks(f, "frames", 16, n, lead_frames=None) for f in (9, 10, 21, 22)] == [1, 2, 2, 3]
    # a start image (1 latent frame -> 1 video frame) is decoded first; every generated chunk adds 12
    assert [_num_chunks(f, "frames", 16, n, lead_frames=1) for f in (1, 13, 14, 25, 26)] == [1, 1, 2, 2, 3]
    # an extension: every chunk adds 12
    assert [_num_chunks(f, "frames", 16, n, lead_frames=0) for f in (1, 12, 13)] == [1, 1, 2]
    assert _num_chunks(2.4, "chunks", 16, n, lead_frames=None) == 2


def test_chunk_count_follows_the_decoder_frame_counts():
    from nodes.stream import _num_chunks
    toy = SFVAE(PixelDecoder(), "toy").frame_counts(3)  # toy pixels: 3 latent frames -> 3 video frames
    assert toy == (3, 3) and SFVAE(object(), "wan").frame_counts(3) == chunk_frame_counts(3)
    assert [_num_chunks(s, "seconds", 8, toy, lead_frames=None) for s in (0.375, 0.5, 6.0)] == [1, 2, 16]
    assert [_num_chunks(f, "frames", 8, toy, lead_frames=0) for f in (3, 4, 48)] == [1, 2, 16]
