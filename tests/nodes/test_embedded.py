"""The embedded-default loader node outside ComfyUI (device cpu): the handles carry the toy decoder's facts."""
import pytest
import torch

from nodes.embedded import SFEmbeddedDefaultModel
from nodes.handles import SFVAE
from nodes.loaders import SFTextEncode
from sf_core.generate.files import default_model
from sf_core.generate.bundle import load_bundle
from sf_core.model import CausalWanModel


@pytest.fixture(scope="module")
def loaded():
    return SFEmbeddedDefaultModel().load("cpu")


def test_loader_gives_the_bundle_of_the_embedded_model(loaded):
    model, text_encoder, vae, info = loaded
    files = default_model()
    bundle = load_bundle(files, "cpu", torch.float32, torch.float32)
    assert model.stream_config == bundle.stream_config
    reference = dict(bundle.model.state_dict())
    assert all(torch.equal(v, reference[k]) for k, v in model.model.state_dict().items())
    prompt = files.defaults.get("prompt", "a red circle moves right on a navy background")
    assert torch.equal(text_encoder.encode([prompt]), bundle.encode([prompt]))
    assert files.description in info and model.device == torch.device("cpu")
    vae.check_model(model.model)


def test_toy_decoder_facts_reach_the_nodes(loaded):
    model, text_encoder, vae, _ = loaded
    assert vae.spatial_stride == 8 and vae.frame_counts(3) == (9, 12)   # the Wan VAE's geometry
    channels = model.model.config.in_dim
    latents = torch.rand(1, 2, channels, 4, 5)                # [B, F, C, h, w]
    assert torch.equal(vae.to_comfy_latent(latents), latents.permute(0, 2, 1, 3, 4))
    frames = vae.fresh_decoder().decode_chunk(latents)
    assert frames.shape == (1, 5, 3, 32, 40)                  # 1 + 4 (2 - 1) frames
    (context,) = SFTextEncode().encode(text_encoder, "a blue square moves left on a teal background")
    assert context.embedding.shape[-1] == model.model.config.text_dim
    with pytest.raises(ValueError, match="toy text encoder: unknown words"):
        SFTextEncode().encode(text_encoder, "a red fox in the snow")


def test_model_and_vae_of_different_worlds_are_refused(loaded):
    from sf_core.config import ModelConfig

    _, _, vae, _ = loaded
    wan_like = CausalWanModel(ModelConfig(dim=32, ffn_dim=64, num_heads=1, num_layers=1, in_dim=12, out_dim=12,
                                          text_dim=8, freq_dim=16, text_len=4))
    with pytest.raises(ValueError, match="decodes 16-channel latents but the model makes 12-channel"):
        vae.check_model(wan_like)
    SFVAE(object(), "wan").check_model(wan_like)  # decoders that do not declare their channels are not checked
