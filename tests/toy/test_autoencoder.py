"""The toy autoencoder: Wan's frame rule, streamed == one-shot decode and encode, its file, its training,
and the bundle / video-to-video plumbing that picks it up."""
import json
from dataclasses import replace

import pytest
import torch

from sf_core.generate.bundle import decoder_class, load_bundle
from sf_core.generate.files import from_manifest
from sf_core.media.timing import decoder_frame_counts
from sf_core.toy.autoencoder import (AutoencoderConfig, ToyAutoencoder, ToyAutoencoderDecoder, ToyAutoencoderEncoder,
                                     code_target, finetune_decoder, load_autoencoder, outline_mask,
                                     reconstruction_loss, save_autoencoder, train_autoencoder, training_clips,
                                     with_new_decoder)
from sf_core.toy.render import MOTION_SCALE, render, render_with_codes
from sf_core.toy.world import ObjectSpec, ObjectState, Scene, SceneSpec
from sf_core.vae.encoders import encoder_for
from sf_core.weights.files import WeightsError

SMALL = AutoencoderConfig(latent_channels=4, width=16)


def _model(seed=0):
    torch.manual_seed(seed)
    model = ToyAutoencoder(SMALL)
    model.latent_mean.uniform_(-0.1, 0.1)   # a non-trivial normalisation, so it is exercised
    model.latent_std.uniform_(0.5, 1.5)
    return model.eval()


def test_frame_rule_is_wans():
    model = _model()
    frames = torch.rand(2, 9, 3, 32, 48) * 2 - 1
    latents = model.encode(frames)
    assert latents.shape == (2, 3, 4, 4, 6)               # 1 + 4k frames -> 1 + k latents, stride 8
    assert model.decode(latents).shape == (2, 9, 3, 32, 48)
    assert model.encode(frames[:, 1:], first=False).shape == (2, 2, 4, 4, 6)
    with pytest.raises(ValueError, match="10 frames to encode, expected 1 \\+ 4k"):
        model.encode(torch.zeros(1, 10, 3, 32, 32))
    assert decoder_frame_counts(ToyAutoencoderDecoder, 3) == (9, 12)


def test_streamed_decode_equals_one_shot_and_its_state_survives_a_round_trip():
    model = _model()
    latents = torch.randn(2, 9, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    whole = model.decode(latents)                         # [2, 33, 3, 32, 32]
    dec = ToyAutoencoderDecoder(model)
    first = dec.decode_chunk(latents[:, :3])
    saved, twin = dec.state_dict(), dec.clone()
    second = dec.decode_chunk(latents[:, 3:6])
    restored = ToyAutoencoderDecoder(model)
    restored.load_state_dict(saved)
    assert torch.equal(restored.decode_chunk(latents[:, 3:6]), second)
    assert torch.equal(twin.decode_chunk(latents[:, 3:6]), second)
    third = dec.decode_chunk(latents[:, 6:])
    streamed = torch.cat([first, second, third], 1)
    assert [first.shape[1], second.shape[1], third.shape[1]] == [9, 12, 12]
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0)
    # the decoder's memory matters: without it the second chunk would differ
    dec.reset()
    assert (dec.decode_chunk(latents[:, 3:6]) - second[:, 3:]).abs().max() > 1e-4


def test_streamed_encode_equals_one_shot():
    model = _model()
    frames = torch.rand(1, 33, 3, 32, 32) * 2 - 1
    enc = ToyAutoencoderEncoder(model)
    streamed = torch.cat([enc.encode_chunk(frames[:, :9]), enc.encode_chunk(frames[:, 9:21]),
                          enc.encode_chunk(frames[:, 21:])], 1)
    torch.testing.assert_close(streamed, model.encode(frames), atol=1e-6, rtol=0)
    assert isinstance(encoder_for(ToyAutoencoderDecoder(model)), ToyAutoencoderEncoder)


def test_file_round_trip_and_errors(tmp_path):
    model = _model()
    path = save_autoencoder(model, tmp_path / "decoder.safetensors")
    loaded = load_autoencoder(path)
    assert loaded.config == SMALL
    torch.testing.assert_close(loaded.latent_std, model.latent_std)          # normalisation kept in float32
    latents = torch.randn(1, 3, 4, 4, 4)
    # float16 weights: the decoded frames agree to float16 precision
    torch.testing.assert_close(loaded.decode(latents), model.decode(latents), atol=2e-2, rtol=0)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(other))
    with pytest.raises(WeightsError, match="other.safetensors: not a toy autoencoder"):
        load_autoencoder(other)


def test_training_crops_are_windows_of_the_frames_on_the_latent_grid():
    def window(step):   # (y, x) of the step's crop in its full frames
        full, full_codes = training_clips(2, 5, step, 64, 64)
        crop, codes = training_clips(2, 5, step, 64, 64, crop=32)
        assert crop.shape == (2, 9, 3, 32, 32) and codes.shape == (2, 9, 9, 32, 32)
        hits = [(y, x) for y in range(0, 33, 8) for x in range(0, 33, 8)
                if torch.equal(crop, full[..., y:y + 32, x:x + 32])]
        assert len(hits) >= 1, step
        y, x = hits[0]
        assert torch.equal(codes, full_codes[..., y:y + 32, x:x + 32])     # the codes are cropped alike
        return hits[0]

    assert len({window(step) for step in range(25)}) == 25    # every window on the grid, in turn
    assert torch.equal(training_clips(2, 5, 3, 64, 64, crop=64)[0], training_clips(2, 5, 3, 64, 64)[0])
    with pytest.raises(ValueError, match="crop 20 is not a multiple of the spatial stride 8"):
        training_clips(2, 5, 3, 64, 64, crop=20)


def test_training_reduces_the_reconstruction_error():
    clips = training_clips(4, 999, 0, 32, 32)[0]
    before = reconstruction_loss(ToyAutoencoder(SMALL), clips, 0.0, None)
    torch.manual_seed(0)
    trained = train_autoencoder(40, batch=4, height=32, width=32, config=SMALL, log=lambda _: None)
    after = reconstruction_loss(trained, clips, 0.0, None)
    assert after < 0.7 * before, (before, after)
    raw = trained.encode_groups(clips[:, 1:].reshape(-1, 4, 3, 32, 32))
    normalised = trained.normalise(raw)                   # the normalisation makes latents ~ unit scale
    assert 0.3 < normalised.std() < 3


def test_decoder_finetuning_keeps_the_latent_space_and_lowers_the_error(tmp_path):
    model = _model()
    clips = training_clips(4, 999, 0, 32, 32)[0]
    latents = model.encode(clips)
    with torch.no_grad():
        before = reconstruction_loss(model, clips, 0.0, None)
    path = save_autoencoder(model, tmp_path / "ae.safetensors")
    from sf_core.toy.autoencoder import main
    assert main([str(path), "--steps", "30", "--out", str(tmp_path / "ft.safetensors")]) == 0
    tuned = load_autoencoder(tmp_path / "ft.safetensors")
    # the encoder (and so every latent a DiT was trained on) is unchanged, up to the file's float16
    torch.testing.assert_close(tuned.encode(clips), load_autoencoder(path).encode(clips), atol=0, rtol=0)
    torch.testing.assert_close(tuned.encode(clips), latents, atol=5e-2, rtol=0)
    with torch.no_grad():
        after = reconstruction_loss(tuned, clips, 0.0, None)
    assert after < 0.8 * before, (before, after)


def test_a_new_decoder_keeps_the_latent_space_and_its_shape_travels_in_the_file(tmp_path):
    model = _model()
    clips = training_clips(4, 999, 0, 32, 32)[0]
    path = save_autoencoder(model, tmp_path / "ae.safetensors")
    from sf_core.toy.autoencoder import main
    assert main([str(path), "--steps", "30", "--new-decoder", "24", "2", "--lr", "3e-3",
                 "--out", str(tmp_path / "new.safetensors")]) == 0
    new = load_autoencoder(tmp_path / "new.safetensors")
    assert (new.config.decoder_width, new.config.decoder_depth) == (24, 2)
    assert len(new.decoder) == len(model.decoder) + 2     # one more block at H/4 and at H/2
    assert sum(p.numel() for p in new.decoder.parameters()) > sum(p.numel() for p in model.decoder.parameters())
    torch.testing.assert_close(new.encode(clips), load_autoencoder(path).encode(clips), atol=0, rtol=0)
    assert new.decode(new.encode(clips)).shape == clips.shape
    with torch.no_grad():   # trained from scratch: 30 steps beat its own random start
        fresh = reconstruction_loss(with_new_decoder(load_autoencoder(path), 24, 2), clips, 0.0, None)
        assert reconstruction_loss(new, clips, 0.0, None) < 0.8 * fresh


def test_a_bundle_with_the_autoencoder_loads_and_names_a_bad_file(tmp_path):
    from sf_core.generate.bundle import FileProblem
    from sf_core.model import CausalWanModel
    from sf_core.config import ModelConfig, StreamConfig
    from sf_core.weights.checkpoint import save_safetensors
    cfg = ModelConfig(dim=32, ffn_dim=64, num_heads=1, num_layers=1, in_dim=4, out_dim=4, text_dim=64,
                      freq_dim=32, text_len=24)
    save_safetensors(CausalWanModel(cfg), tmp_path / "model.safetensors", StreamConfig(chunk_frames=3), cfg)
    save_autoencoder(_model(), tmp_path / "decoder.safetensors")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "checkpoint": "model.safetensors", "text_encoder": {"kind": "toy", "text_dim": 64, "max_len": 24},
        "decoder": {"kind": "toy_autoencoder", "file": "decoder.safetensors"}, "width": 32, "height": 32}))
    files = from_manifest(tmp_path)
    assert decoder_class(files).spatial_stride == 8
    bundle = load_bundle(files, "cpu", torch.float32, torch.float32)
    assert isinstance(bundle.decoder, ToyAutoencoderDecoder)
    (tmp_path / "decoder.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(FileProblem, match="toy autoencoder file .*decoder.safetensors: .*expected the toy world's"):
        load_bundle(files, "cpu", torch.float32, torch.float32)


def test_the_outline_mask_is_a_band_around_each_object_and_nothing_else():
    spec = SceneSpec((ObjectSpec("square", "red", "static"),), ("navy", "olive"))   # a gradient background
    frames = render([Scene(spec, (ObjectState(x=0.5, y=0.5, size=0.12),))], 1, height=64, width=64) * 2 - 1
    mask = outline_mask(frames)[0, 0, 0]                                       # [H, W]
    inside = frames[0, 0, 0] > 0.3                                            # the square: red, the background not
    ys, xs = inside.nonzero().unbind(1)
    band = torch.zeros_like(mask, dtype=torch.bool)
    band[ys.min() - 2:ys.max() + 3, xs.min() - 2:xs.max() + 3] = True
    band[ys.min() + 3:ys.max() - 2, xs.min() + 3:xs.max() - 2] = False
    assert mask.sum() > 0 and bool((mask.bool() <= band).all())               # only near the outline
    assert bool(mask[ys.min(), xs.min():xs.max() + 1].bool().all())           # the whole top edge
    assert mask[32, 32] == 0 and mask[2, 2] == 0                              # not the middle, not the gradient


def test_the_outline_weight_moves_the_loss_only_where_there_are_outlines():
    torch.manual_seed(0)
    plain = ToyAutoencoder(SMALL).eval()
    weighted = ToyAutoencoder(replace(SMALL, outline_weight=8.0)).eval()
    weighted.load_state_dict(plain.state_dict())
    empty = render([Scene(SceneSpec((), ("gray", "gray")), ())], 9, height=32, width=32) * 2 - 1
    clips = training_clips(2, 999, 0, 32, 32)[0]
    with torch.no_grad():
        torch.testing.assert_close(reconstruction_loss(weighted, empty, 0.0, None),
                                   reconstruction_loss(plain, empty, 0.0, None))
        assert abs(reconstruction_loss(weighted, clips, 0.0, None) - reconstruction_loss(plain, clips, 0.0, None)) > 1e-3


def test_the_code_target_names_each_cells_shape_motion_and_object():
    square = Scene(SceneSpec((ObjectSpec("square", "red", "down"),), ("gray", "gray")),
                   (ObjectState(x=0.3, y=0.3, size=0.14, speed=0.04),))   # a 16-px square over pixels 11..27
    _, codes = render_with_codes([square], 9, height=64, width=64)
    target = code_target(codes)                                            # [1, 3, 9, 8, 8]
    assert target.shape == (1, 3, 9, 8, 8)
    assert target[:, :, 0].max() == 0 and target[:, :, 2].max() == 0       # no circle, no triangle
    assert torch.isclose(target[0, 0, 1].sum() * 64, 0.9 * codes[0, 0, 1].sum())   # the square's area, × 0.9
    assert target.max() <= 0.9 + 1e-6 and torch.allclose(target[0, 0, 1, 2, 2], torch.tensor(0.9))  # cell 16..24
    assert target[:, :, 3].abs().max() == 0 and target[:, :, 5].abs().max() == 0   # it moves in y only
    torch.testing.assert_close(target[:, :, 4], 0.04 / MOTION_SCALE[1] * target[:, :, 1])   # down, where it is
    torch.testing.assert_close(target[:, :, 6], target[:, :, 1])           # object 1 is the square
    assert target[:, :, 7:].abs().max() == 0                               # and there is no object 2 or 3


@pytest.mark.parametrize("code, channels", [("shape_code", slice(0, 3)), ("motion_code", slice(3, 6)),
                                           ("object_code", slice(6, 9))])
def test_training_with_a_code_writes_it_into_its_channels(code, channels):
    clips, codes = training_clips(4, 999, 0, 32, 32)
    target = code_target(codes)[:, :, channels]
    errors = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        config = replace(SMALL, latent_channels=9, **{code: weight})
        model = train_autoencoder(30, batch=4, height=32, width=32, config=config, log=lambda _: None)
        with torch.no_grad():
            errors[weight] = torch.nn.functional.mse_loss(model.encode_raw(clips)[:, :, channels], target).item()
    assert errors[5.0] < 0.5 * errors[0.0], errors
    with pytest.raises(ValueError, match=f"{code} > 0 needs the clips' codes"):
        reconstruction_loss(model, clips, 0.0, None)


@pytest.mark.parametrize("code, needs", [("shape_code", 3), ("motion_code", 6), ("object_code", 9)])
def test_a_code_needs_room_for_its_channels(code, needs):
    with pytest.raises(ValueError, match=f"{code} > 0 ties latent channels {needs - 3}..{needs - 1} to .*, so "
                                         f"needs latent_channels >= {needs}; got {needs - 1}"):
        replace(SMALL, latent_channels=needs - 1, **{code: 1.0})
    assert getattr(replace(SMALL, latent_channels=needs, **{code: 1.0}), code) == 1.0
