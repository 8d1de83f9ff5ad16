"""TAEHV tiny decoder: taew2_1 names, frame counts, streaming modes, weight files, common decoder interface."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sf_core.vae.decoders import load_chunk_decoder
from sf_core.vae.taehv import TAEHV, StreamingTAEHVDecoder, load_taehv
from sf_core.vae.wan import StreamingDecoder, VAEConfig, WanVAE
from sf_core.weights.files import WeightsError

WIDTHS = (16, 8, 8, 8)


@pytest.fixture(scope="module")
def tae() -> TAEHV:
    torch.manual_seed(0)
    model = TAEHV(widths=WIDTHS, encoder_width=8)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
        model.decoder[22].bias.fill_(0.5)  # keep outputs inside (0, 1) so the clamp does not hide everything
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 7, 16, 2, 3)


@pytest.fixture(scope="module")
def full(tae, latents) -> torch.Tensor:
    return tae.decode_video(latents)


def test_taew2_1_key_layout_and_size():
    with torch.device("meta"):
        sd = TAEHV().state_dict()
    assert len(sd) == 128
    assert sum(v.numel() for v in sd.values()) == pytest.approx(11.3e6, rel=0.01)
    expected = {
        "encoder.0.weight": [64, 3, 3, 3], "encoder.2.conv.weight": [64, 128, 1, 1],
        "encoder.3.weight": [64, 64, 3, 3], "encoder.4.conv.0.weight": [64, 128, 3, 3],
        "encoder.12.conv.weight": [64, 64, 1, 1], "encoder.17.weight": [16, 64, 3, 3],
        "decoder.1.weight": [256, 16, 3, 3], "decoder.3.conv.0.weight": [256, 512, 3, 3],
        "decoder.7.conv.weight": [256, 256, 1, 1], "decoder.8.weight": [128, 256, 3, 3],
        "decoder.13.conv.weight": [256, 128, 1, 1], "decoder.14.weight": [64, 128, 3, 3],
        "decoder.19.conv.weight": [128, 64, 1, 1], "decoder.20.weight": [64, 64, 3, 3],
        "decoder.22.weight": [3, 64, 3, 3], "decoder.22.bias": [3],
    }
    assert {k: list(sd[k].shape) for k in expected} == expected
    assert "decoder.8.bias" not in sd and "encoder.3.bias" not in sd


def test_frame_counts_and_range(tae, latents, full):
    assert full.shape == (2, 4 * 7 - 3, 3, 16, 24)
    assert full.min() >= -1 and full.max() <= 1 and full.std() > 0.05
    torch.manual_seed(2)
    frames = torch.rand(1, 9, 3, 16, 24) * 2 - 1
    assert tae.encode_video(frames).shape == (1, 3, 16, 2, 3)  # 9 frames padded to 12 → 3 latents


@pytest.mark.parametrize("split", [[3, 3, 1], [1] * 7, [2, 5], [7]])
def test_memory_stream_equals_one_shot(tae, latents, full, split):
    dec = StreamingTAEHVDecoder(tae)
    outs, start = [], 0
    for n in split:
        outs.append(dec.decode_chunk(latents[:, start:start + n]))
        start += n
    assert [o.shape[1] for o in outs] == [4 * n - 3 if i == 0 else 4 * n for i, n in enumerate(split)]
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)


def test_overlap_stream_decodes_each_chunk_with_three_latents_of_context(tae, latents):
    dec = StreamingTAEHVDecoder(tae, mode="overlap")
    chunks = [latents[:, 0:3], latents[:, 3:6], latents[:, 6:7]]
    outs = [dec.decode_chunk(c) for c in chunks]
    assert [o.shape[1] for o in outs] == [9, 12, 4]
    assert torch.allclose(outs[0], tae.decode_video(chunks[0]), atol=1e-6)
    assert torch.allclose(outs[1], tae.decode_video(latents[:, 0:6])[:, -12:], atol=1e-6)
    assert torch.allclose(outs[2], tae.decode_video(latents[:, 3:7])[:, -4:], atol=1e-6)


@pytest.mark.parametrize("mode", ["memory", "overlap"])
def test_state_save_load_continue_and_clone(tae, latents, mode, tmp_path):
    dec = StreamingTAEHVDecoder(tae, mode)
    dec.decode_chunk(latents[:, :3])
    path = tmp_path / "tae_state.safetensors"
    save_file(dec.state_dict(), str(path))
    resumed = StreamingTAEHVDecoder(tae, mode)
    resumed.load_state_dict(load_file(str(path)))
    fork = dec.clone()
    fork.decode_chunk(torch.randn(2, 3, 16, 2, 3))
    expected = dec.decode_chunk(latents[:, 3:6])
    assert expected.shape[1] == 12
    assert torch.equal(resumed.decode_chunk(latents[:, 3:6]), expected)
    with pytest.raises(KeyError, match="unknown"):
        resumed.load_state_dict({"bogus": torch.zeros(1)})
    dec.reset()
    assert dec.decode_chunk(latents[:, :3]).shape[1] == 9


def test_pth_and_safetensors_load_identically(tae, latents, full, tmp_path):
    sd = tae.state_dict()
    pth, st = tmp_path / "taew2_1.pth", tmp_path / "lighttaew2_1.safetensors"
    torch.save({k: v.clone() for k, v in sd.items()}, pth)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    a, b = load_taehv(pth), load_taehv(st)
    for k, v in sd.items():
        assert torch.equal(a.state_dict()[k], v) and torch.equal(b.state_dict()[k], v), k
    assert torch.allclose(b.decode_video(latents), full, atol=1e-6)


def test_decoder_only_file(tae, full, latents, tmp_path):
    path = tmp_path / "taew2_1_decoder.safetensors"
    save_file({k: v.contiguous() for k, v in tae.state_dict().items() if k.startswith("decoder.")}, str(path))
    model = load_taehv(path)
    assert not model.has_encoder
    assert torch.allclose(model.decode_video(latents), full, atol=1e-6)
    with pytest.raises(RuntimeError, match="encoder"):
        model.encode_video(torch.zeros(1, 4, 3, 16, 24))


def test_bad_files_give_clear_errors(tae, tmp_path):
    sd = dict(tae.state_dict())
    missing = {k: v for k, v in sd.items() if k != "decoder.9.conv.2.weight"}
    save_file(missing, str(tmp_path / "m.safetensors"))
    with pytest.raises(WeightsError, match=r"m\.safetensors.*'decoder\.9\.conv\.2\.weight' \[8, 8, 3, 3\]"):
        load_taehv(tmp_path / "m.safetensors")
    wan22 = dict(sd, **{"decoder.1.weight": torch.zeros(16, 48, 3, 3)})
    save_file(wan22, str(tmp_path / "taew2_2.safetensors"))
    with pytest.raises(WeightsError, match="48 latent channels"):
        load_taehv(tmp_path / "taew2_2.safetensors")
    torch.manual_seed(0)
    save_file(WanVAE(VAEConfig(dim=4)).state_dict(), str(tmp_path / "wan_vae.safetensors"))
    with pytest.raises(WeightsError, match="not a TAEHV.*decoder.1.weight"):
        load_taehv(tmp_path / "wan_vae.safetensors")


def test_load_chunk_decoder_picks_by_content_and_shares_the_interface(tae, latents, tmp_path):
    torch.manual_seed(0)
    save_file(WanVAE(VAEConfig(dim=4)).state_dict(), str(tmp_path / "a.safetensors"))
    save_file(tae.state_dict(), str(tmp_path / "b.safetensors"))
    decoders = [load_chunk_decoder(tmp_path / "a.safetensors"), load_chunk_decoder(tmp_path / "b.safetensors")]
    assert isinstance(decoders[0], StreamingDecoder) and isinstance(decoders[1], StreamingTAEHVDecoder)
    for dec in decoders:
        counts = [dec.decode_chunk(latents[:1, i:i + 3]).shape for i in (0, 3)]
        assert [tuple(c) for c in counts] == [(1, 9, 3, 16, 24), (1, 12, 3, 16, 24)]
        assert dec.clone().state_dict().keys() == dec.state_dict().keys()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(WeightsError, match="neither"):
        load_chunk_decoder(tmp_path / "c.safetensors")
