"""Scaled-fp8 umT5 files kept in fp8 in memory: same embeddings, about half the linear bytes."""
import torch

from sf_core.memory import nbytes
from sf_core.testing.tiny import TINY_UMT5, make_tiny_umt5, tiny_umt5_state_dict
from sf_core.text.encoder import TextEncoder
from sf_core.text.fp8 import StoredFp8Linear

PROMPTS = ["a red fox trotting through fresh snow", "", "ein Hund läuft am Strand"]


def test_kept_fp8_encodes_bitwise_like_the_dequantised_file_in_less_memory(tmp_path):
    weights = tiny_umt5_state_dict(TINY_UMT5, seed=2)
    path = make_tiny_umt5(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", fp8=True, state_dict=weights,
                          dtype=torch.float16)
    for dtype in (torch.float32, torch.bfloat16):
        kept = TextEncoder.load(path, dtype=dtype, keep_fp8=True)
        dequantised = TextEncoder.load(path, dtype=dtype)
        layers = [m for m in kept.model.modules() if isinstance(m, StoredFp8Linear)]
        assert len(layers) == 7 * TINY_UMT5.num_layers  # q, k, v, o, gate, fc1, fc2 of every block
        assert all(m.weight.dtype == torch.float8_e4m3fn for m in layers)
        assert torch.equal(kept.encode(PROMPTS), dequantised.encode(PROMPTS))
        linear = sum(m.weight.numel() for m in layers)
        saved = nbytes(dequantised.model) - nbytes(kept.model)
        assert saved == linear * (dtype.itemsize - 1) - 4 * len(layers)  # fp8 bytes, plus one float32 scale each


def test_keep_fp8_leaves_unquantised_files_as_they_were(tmp_path):
    path = make_tiny_umt5(tmp_path / "umt5_xxl_fp16.safetensors", dtype=torch.float16)
    kept = TextEncoder.load(path, dtype=torch.float32, keep_fp8=True)
    assert not any(isinstance(m, StoredFp8Linear) for m in kept.model.modules())
    assert torch.equal(kept.encode(PROMPTS), TextEncoder.load(path, dtype=torch.float32).encode(PROMPTS))
