"""Wan2.1 VAE: official names, normalisation, one-shot vs streamed coding, weight files, stream state."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sf_core.vae.wan import (LATENT_MEAN, LATENT_STD, StreamingDecoder, StreamingEncoder, VAEConfig, WanVAE,
                         comfy_to_pipeline, denormalize, load_vae, normalize, pipeline_to_comfy)
from sf_core.weights.files import WeightsError

# Literal statistics from reference/formats.md §2 (kept separate from the module's copy on purpose).
REF_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
            0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
REF_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
           3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]

TINY = VAEConfig(dim=8)


def _tiny_vae(seed: int = 0) -> WanVAE:
    torch.manual_seed(seed)
    vae = WanVAE(TINY)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            else:
                p.mul_(1.5)
    return vae.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return _tiny_vae()


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 7, 16, 2, 3)  # normalised [B, F, C, h, w]


@pytest.fixture(scope="module")
def reference_frames(vae, latents) -> torch.Tensor:
    return vae.decode_latents(latents)  # official order: one latent per decoder call


def test_official_key_layout_and_size():
    with torch.device("meta"):
        sd = WanVAE().state_dict()
    assert len(sd) == 194
    assert sum(v.numel() for v in sd.values()) == pytest.approx(126.9e6, rel=1e-3)
    expected = {
        "encoder.conv1.weight": [96, 3, 3, 3, 3],
        "encoder.downsamples.2.resample.1.weight": [96, 96, 3, 3],
        "encoder.downsamples.3.shortcut.weight": [192, 96, 1, 1, 1],
        "encoder.downsamples.5.time_conv.weight": [192, 192, 3, 1, 1],
        "encoder.middle.1.norm.gamma": [384, 1, 1],
        "encoder.middle.1.to_qkv.weight": [1152, 384, 1, 1],
        "encoder.head.0.gamma": [384, 1, 1, 1],
        "encoder.head.2.weight": [32, 384, 3, 3, 3],
        "conv1.weight": [32, 32, 1, 1, 1],
        "conv2.weight": [16, 16, 1, 1, 1],
        "decoder.conv1.weight": [384, 16, 3, 3, 3],
        "decoder.upsamples.3.resample.1.weight": [192, 384, 3, 3],
        "decoder.upsamples.3.time_conv.weight": [768, 384, 3, 1, 1],
        "decoder.upsamples.4.shortcut.weight": [384, 192, 1, 1, 1],
        "decoder.upsamples.11.resample.1.weight": [96, 192, 3, 3],
        "decoder.upsamples.14.residual.6.weight": [96, 96, 3, 3, 3],
        "decoder.head.0.gamma": [96, 1, 1, 1],
        "decoder.head.2.weight": [3, 96, 3, 3, 3],
    }
    assert {k: list(sd[k].shape) for k in expected} == expected
    assert "decoder.upsamples.15.residual.0.gamma" not in sd


def test_normalisation_matches_reference_statistics():
    torch.manual_seed(0)
    raw = torch.randn(2, 16, 3, 4, 5) * 3
    mean = torch.tensor(REF_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(REF_STD).view(1, 16, 1, 1, 1)
    assert torch.allclose(normalize(raw), (raw - mean) / std, atol=1e-6)
    assert torch.allclose(denormalize(normalize(raw)), raw, atol=1e-5)
    assert list(LATENT_MEAN) == REF_MEAN and list(LATENT_STD) == REF_STD
    pipe = comfy_to_pipeline(raw)  # [B, F, C, h, w]
    assert pipe.shape == (2, 3, 16, 4, 5)
    assert torch.allclose(pipe[:, 1], ((raw - mean) / std)[:, :, 1], atol=1e-6)
    assert torch.allclose(pipeline_to_comfy(pipe), raw, atol=1e-5)
    with pytest.raises(ValueError, match="16"):
        normalize(torch.zeros(1, 4, 2, 2, 2))


def test_encode_decode_shapes(vae):
    torch.manual_seed(2)
    video = torch.rand(1, 9, 3, 16, 24) * 2 - 1  # [B, T, 3, H, W]
    lat = vae.encode_video(video)
    assert lat.shape == (1, 3, 16, 2, 3)
    frames = vae.decode_latents(lat)
    assert frames.shape == (1, 9, 3, 16, 24)
    assert frames.abs().max() <= 1.0 and frames.std() > 0.05
    assert vae.decode(torch.randn(1, 16, 1, 2, 3)).shape == (1, 3, 1, 16, 24)
    with pytest.raises(ValueError, match="1 \\+ 4"):
        vae.encode(torch.zeros(1, 3, 8, 16, 24))


def test_decode_is_causal(vae, latents, reference_frames):
    prefix = vae.decode_latents(latents[:, :3])
    assert torch.allclose(prefix, reference_frames[:, :9], atol=1e-5)


@pytest.mark.parametrize("split", [[3, 3, 1], [1] * 7, [1, 3, 3], [2, 5], [7]])
def test_streamed_decode_equals_one_shot(vae, latents, reference_frames, split):
    dec = StreamingDecoder(vae)
    outs, start = [], 0
    for n in split:
        outs.append(dec.decode_chunk(latents[:, start:start + n]))
        start += n
    expected_counts = [4 * n - 3 if i == 0 else 4 * n for i, n in enumerate(split)]
    assert [o.shape[1] for o in outs] == expected_counts
    assert torch.allclose(torch.cat(outs, 1), reference_frames, atol=1e-5)


def test_state_save_load_continue(vae, latents, reference_frames, tmp_path):
    dec = StreamingDecoder(vae)
    first = dec.decode_chunk(latents[:, :3])
    path = tmp_path / "vae_state.safetensors"
    save_file(dec.state_dict(), str(path))
    resumed = StreamingDecoder(vae)
    resumed.load_state_dict(load_file(str(path)))
    rest = resumed.decode_chunk(latents[:, 3:])
    assert torch.equal(rest, dec.decode_chunk(latents[:, 3:]))
    assert torch.allclose(torch.cat([first, rest], 1), reference_frames, atol=1e-5)
    assert set(dec.state_dict()) == set(vae.cache_keys("decoder"))


def test_clone_is_independent_and_reset(vae, latents, reference_frames):
    dec = StreamingDecoder(vae)
    dec.decode_chunk(latents[:, :3])
    fork = dec.clone()
    fork.decode_chunk(torch.randn(2, 3, 16, 2, 3))  # the fork diverges
    assert torch.allclose(dec.decode_chunk(latents[:, 3:6]), reference_frames[:, 9:21], atol=1e-5)
    dec.reset()
    assert dec.state_dict() == {}
    assert dec.decode_chunk(latents[:, :3]).shape[1] == 9


def test_bad_state_is_rejected(vae):
    dec = StreamingDecoder(vae)
    with pytest.raises(KeyError, match="unknown"):
        dec.load_state_dict({"decoder.nope": torch.zeros(1)})
    some_key = vae.cache_keys("decoder")[0]
    with pytest.raises(KeyError, match="partial"):
        dec.load_state_dict({some_key: torch.zeros(1)})


def test_streaming_encoder_equals_one_shot(vae):
    torch.manual_seed(3)
    video = torch.rand(1, 13, 3, 16, 24) * 2 - 1
    expected = vae.encode_video(video)  # official order: 1, 4, 4, 4 frames per call
    enc = StreamingEncoder(vae)
    pieces = [enc.encode_chunk(video[:, :5]), enc.encode_chunk(video[:, 5:13])]
    assert [p.shape[1] for p in pieces] == [2, 2]
    assert torch.allclose(torch.cat(pieces, 1), expected, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 4"):
        enc.encode_chunk(video[:, :3])


def test_official_pth_and_comfy_safetensors_load_identically(vae, latents, tmp_path):
    sd = vae.state_dict()
    pth, st = tmp_path / "Wan2.1_VAE.pth", tmp_path / "wan_2.1_vae.safetensors"
    torch.save({k: v.clone() for k, v in sd.items()}, pth)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    a, b = load_vae(pth), load_vae(st)
    assert a.config == b.config == TINY
    for k, v in sd.items():
        assert torch.equal(a.state_dict()[k], v) and torch.equal(b.state_dict()[k], v), k
    assert torch.equal(a.decode_latents(latents[:, :2]), b.decode_latents(latents[:, :2]))


def test_half_precision_file_is_cast(vae, tmp_path):
    path = tmp_path / "wan_2.1_vae_fp16.safetensors"
    save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(path))
    loaded = load_vae(path)
    w = loaded.state_dict()["decoder.head.2.weight"]
    assert w.dtype == torch.float32
    assert torch.equal(w, vae.state_dict()["decoder.head.2.weight"].half().float())


def test_decoder_only_file(vae, latents, reference_frames, tmp_path):
    path = tmp_path / "vae_decoder.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()
               if k.startswith("decoder.") or k.startswith("conv2.")}, str(path))
    dec_only = load_vae(path)
    assert not dec_only.has_encoder
    assert torch.allclose(StreamingDecoder(dec_only).decode_chunk(latents[:, :3]), reference_frames[:, :9],
                          atol=1e-5)
    with pytest.raises(RuntimeError, match="encoder"):
        dec_only.encode(torch.zeros(1, 3, 1, 16, 24))


def _write(sd, path):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_bad_files_give_clear_errors(vae, tmp_path):
    sd = dict(vae.state_dict())
    missing = dict(sd)
    del missing["decoder.head.2.weight"]
    with pytest.raises(WeightsError, match=r"missing.*'decoder\.head\.2\.weight' \[3, 8, 3, 3, 3\]") as err:
        load_vae(_write(missing, tmp_path / "missing.safetensors"))
    assert "missing.safetensors" in str(err.value)

    wrong = dict(sd)
    wrong["decoder.middle.1.proj.weight"] = torch.zeros(32, 32, 3, 3)
    with pytest.raises(WeightsError, match=r"'decoder\.middle\.1\.proj\.weight' has shape \[32, 32, 3, 3\], "
                                           r"expected \[32, 32, 1, 1\]"):
        load_vae(_write(wrong, tmp_path / "wrong.safetensors"))

    extra = dict(sd, **{"decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="unexpected.*decoder.extra.weight"):
        load_vae(_write(extra, tmp_path / "extra.safetensors"))

    with pytest.raises(WeightsError, match="TAEHV.*load_taehv"):
        load_vae(_write({"decoder.22.bias": torch.zeros(3), "decoder.1.weight": torch.zeros(4, 16, 3, 3)},
                        tmp_path / "taew2_1.safetensors"))
    with pytest.raises(WeightsError, match="not a Wan2.1 VAE.*decoder.head.0.gamma"):
        load_vae(_write({"model.weight": torch.zeros(2)}, tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="no such file"):
        load_vae(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="refusing to load .*garbage.pth"):
        load_vae(garbage)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(WeightsError, match="plain dict of tensors"):
        load_vae(listed)
