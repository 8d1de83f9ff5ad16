"""A DiT from tensors already in memory (a ComfyUI MODEL's weights) equals the one loaded from the same file."""
import torch

from sf_core.weights.checkpoint import load_model, model_from_state_dict, save_safetensors


def test_in_memory_weights_in_comfy_layout_build_the_file_s_model(tiny_model, tiny_config, tmp_path):
    path = save_safetensors(tiny_model, tmp_path / "dit.safetensors", model_config=tiny_config)
    from_file, _ = load_model(path)
    prefixed = {f"model.diffusion_model.{k}": v.clone() for k, v in tiny_model.state_dict().items()}
    meta = {"sf_model": tiny_config.to_json()}  # head size 64: not inferable from shapes
    in_memory, stream = model_from_state_dict(prefixed, meta, "native MODEL", torch.float32)
    assert in_memory.config == from_file.config and stream.chunk_frames == 3
    assert all(torch.equal(a, b) for a, b in zip(in_memory.state_dict().values(), from_file.state_dict().values()))
