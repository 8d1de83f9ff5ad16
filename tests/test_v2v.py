"""Streaming video-to-video: strength → first step, streamed encoders, split independence, frame counts, errors."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sf_core.config import StreamConfig
from sf_core.model import CausalWanModel
from sf_core.pipeline import PromptSwitch, StreamingPipeline
from sf_core.testing.tiny import TINY_DIT, randomize
from sf_core.toy.pixels import PixelDecoder, PixelEncoder
from sf_core.v2v import VideoToVideo, first_step, step_sigmas
from sf_core.vae.encoders import StreamingTAEHVEncoder, WanChunkEncoder, encoder_for
from sf_core.vae.taehv import TAEHV, StreamingTAEHVDecoder, apply_blocks
from sf_core.vae.wan import StreamingDecoder, VAEConfig, WanVAE

H = W = 32  # pixels -> 4×4 latent with the Wan VAE
DIT16 = replace(TINY_DIT, in_dim=16, out_dim=16)


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig(dim=8))
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("gamma") else p.mul_(1.5)
    return vae.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def dit() -> CausalWanModel:
    return randomize(CausalWanModel(DIT16, attention="sdpa"), seed=3).eval()


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.rand(1, 30, 3, H, W, generator=g) * 2 - 1   # [B, T, 3, H, W]: 9 + 12 + 9 frames


def _ctx(seed=0):
    return torch.randn(1, 5, DIT16.text_dim, generator=torch.Generator().manual_seed(seed))


def _v2v(dit, vae, strength, prompts=None, window=-1):
    pipe = StreamingPipeline(dit, StreamConfig(window=window))
    state = pipe.start(_ctx(), H, W, seed=1, max_frames=12)
    return pipe, state, VideoToVideo(pipe, state, WanChunkEncoder(vae), strength, prompts)


def _latents(chunks):
    return torch.cat([c.chunk.latents for c in chunks], 1)


def test_strength_picks_the_nearest_step_at_or_below(dit):
    pipe = StreamingPipeline(dit)  # official 4 steps at shift 5: σ = 1, 0.9375, 0.8333, 0.625
    assert step_sigmas(pipe) == pytest.approx([1.0, 0.9375, 0.833333, 0.625], abs=1e-5)
    cases = {1.0: 0, 0.99: 1, 0.9375: 1, 0.9: 2, 0.8333334: 2, 0.7: 3, 0.625: 3, 0.6: 4, 0.0: 4}
    assert {s: first_step(pipe, s) for s in cases} == cases
    for bad in (-0.01, 1.5):
        with pytest.raises(ValueError, match=r"strength must lie in \[0, 1\]"):
            first_step(pipe, bad)


def test_strength_one_is_text_to_video_bit_for_bit(dit, vae, video):
    pipe, state, v2v = _v2v(dit, vae, 1.0)
    got = _latents(v2v.stream([video[:, :21]]))
    t2v_pipe = StreamingPipeline(dit, StreamConfig())
    expected = torch.cat([c.latents for c in t2v_pipe.stream(t2v_pipe.start(_ctx(), H, W, seed=1, max_frames=12), 2)], 1)
    assert torch.equal(got, expected)


def test_strength_zero_returns_the_inputs_reconstruction(dit, vae, video):
    _, _, v2v = _v2v(dit, vae, 0.0)
    clip = video[:, :21]
    got = _latents(v2v.stream([clip]))
    assert torch.allclose(got, vae.encode_video(clip), atol=1e-5)   # the one-shot encode
    decoder = StreamingDecoder(vae)
    frames = torch.cat([decoder.decode_chunk(got[:, :3]), decoder.decode_chunk(got[:, 3:])], 1)
    assert torch.allclose(frames, vae.decode_latents(vae.encode_video(clip)), atol=1e-5)


def test_intermediate_strength_follows_the_recipe(dit, vae, video):
    """strength 0.7 → last step (σ 0.625): x = 0.375·z + 0.625·ε(chunk 0, step 3), x0 = x − σ·v."""
    pipe, state, v2v = _v2v(dit, vae, 0.7)
    chunk = v2v.push(video[:, :9])[0].chunk
    z = vae.encode_video(video[:, :9])
    from sf_core.cache import KVCache
    eps = state.noise(0, 3, z.shape, torch.float32, "cpu")
    x = 0.375 * z + 0.625 * eps
    with torch.no_grad():
        v = dit(x, torch.full((1, 3), 625.0), _ctx(), KVCache.allocate(DIT16, 1, 4, 12), 0)
    assert (chunk.latents - (x.double() - 0.625 * v.double()).float()).abs().max() < 1e-4


@pytest.mark.parametrize("splits", [[1, 7, 13, 9], [5] * 6, [29, 1]])
def test_output_does_not_depend_on_how_the_input_was_split(dit, vae, video, splits):
    whole = _latents(_v2v(dit, vae, 0.9)[2].stream([video]))
    pieces = list(torch.split(video, splits, dim=1))
    assert torch.equal(_latents(_v2v(dit, vae, 0.9)[2].stream(pieces)), whole)


def test_trailing_partial_chunk_is_padded_and_marked(dit, vae, video):
    clip = video[:, :26]  # 9 + 12 + 5
    out = list(_v2v(dit, vae, 0.9)[2].stream([clip]))
    assert [c.frames for c in out] == [9, 12, 5]
    padded = torch.cat([clip, clip[:, -1:].expand(-1, 7, -1, -1, -1)], 1)
    assert torch.equal(_latents(out), _latents(_v2v(dit, vae, 0.9)[2].stream([padded])))


def test_prompt_switches_apply_at_their_chunk(dit, vae, video):
    switch = {1: PromptSwitch(_ctx(9))}
    plain = _latents(_v2v(dit, vae, 0.9)[2].stream([video[:, :21]]))
    switched = _latents(_v2v(dit, vae, 0.9, switch)[2].stream([video[:, :21]]))
    assert torch.equal(plain[:, :3], switched[:, :3]) and not torch.allclose(plain[:, 3:], switched[:, 3:])
    pipe, state, v2v = _v2v(dit, vae, 0.9)
    first = v2v.push(video[:, :9])
    pipe.switch_prompt(state, _ctx(9))
    assert torch.equal(_latents(first + v2v.push(video[:, 9:21])), switched)


def test_bad_inputs_are_refused_clearly(dit, vae, video):
    v2v = _v2v(dit, vae, 0.5)[2]
    with pytest.raises(ValueError, match=r"input frames are 16x32 \(WxH\), the stream is 32x32"):
        v2v.push(video[..., :16])
    with pytest.raises(ValueError, match=r"must be \[B, T, 3, H, W\]"):
        v2v.push(video[0])
    v2v.push(video[:, :5])
    with pytest.raises(ValueError, match="the input has 5 frame.*needs at least 9"):
        v2v.finish()
    with pytest.raises(ValueError, match="strength"):
        _v2v(dit, vae, 1.2)


def test_wan_encoder_streamed_equals_one_shot(vae, video):
    enc = encoder_for(StreamingDecoder(vae))
    streamed = torch.cat([enc.encode_chunk(video[:, :9]), enc.encode_chunk(video[:, 9:21])], 1)
    assert torch.allclose(streamed, vae.encode_video(video[:, :21]), atol=1e-5)


def test_taehv_encoder_streamed_equals_one_shot_on_the_front_padded_clip(video):
    torch.manual_seed(0)
    tae = TAEHV(widths=(16, 8, 8, 8), encoder_width=8).eval().requires_grad_(False)
    enc = encoder_for(StreamingTAEHVDecoder(tae))
    assert isinstance(enc, StreamingTAEHVEncoder)
    clip = video[:, :21]
    streamed = torch.cat([enc.encode_chunk(clip[:, :9]), enc.encode_chunk(clip[:, 9:])], 1)
    padded = torch.cat([clip[:, :1].expand(-1, 3, -1, -1, -1), clip], 1)
    with torch.no_grad():
        one_shot = apply_blocks(tae.encoder, (padded + 1) / 2, {}, "encoder")
    assert streamed.shape == (1, 6, 16, 4, 4) and torch.allclose(streamed, one_shot, atol=1e-5)
    decoded = StreamingTAEHVDecoder(tae).decode_chunk(streamed[:, :3])
    assert decoded.shape[1] == 9  # 3 latents → the 9 frames that came in


def test_toy_pixel_encoder_inverts_the_decoder():
    frames = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    assert isinstance(encoder_for(PixelDecoder()), PixelEncoder)
    assert torch.allclose(PixelDecoder().decode_chunk(PixelEncoder().encode_chunk(frames)), frames, atol=1e-6)
