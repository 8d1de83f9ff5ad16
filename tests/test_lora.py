"""LoRA at inference: the file formats users have, matching and refusals, merged == unmerged, strength rules."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sf_core.config import StreamConfig
from sf_core.lora import UnmergedLoRA, merge, restore
from sf_core.model import CausalWanModel
from sf_core.pipeline import StreamingPipeline
from sf_core.testing.tiny import TINY_DIT, TINY_UMT5, randomize
from sf_core.text.umt5 import UMT5Encoder
from sf_core.weights.checkpoint import _rename
from sf_core.weights.lora import LoRAError, read_lora

D, F = TINY_DIT.dim, TINY_DIT.ffn_dim
TARGETS = {"blocks.0.self_attn.q": (D, D), "blocks.1.cross_attn.k": (D, D), "blocks.0.ffn.0": (F, D),
           "blocks.1.ffn.2": (D, F)}
RANK = 4


def _adapters(seed=0, zero_up=False):
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(RANK, i, generator=g) * 0.3,
                   torch.zeros(o, RANK) if zero_up else torch.randn(o, RANK, generator=g) * 0.3)
            for name, (o, i) in TARGETS.items()}


def _write(path, adapters, fmt, alpha=8.0):
    """The same adapters in each user format; the expected scale is alpha / rank (PEFT without alpha: 1)."""
    sd, meta = {}, None
    for name, (down, up) in adapters.items():
        if fmt == "kohya":
            sd[f"diffusion_model.{name}.lora_down.weight"], sd[f"diffusion_model.{name}.lora_up.weight"] = down, up
            sd[f"diffusion_model.{name}.alpha"] = torch.tensor(alpha)
        elif fmt == "kohya_underscore":
            key = "lora_unet_" + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
            sd[f"{key}.alpha"] = torch.tensor(alpha)
        elif fmt == "peft_diffusers":
            key = "transformer." + _rename(name + ".weight", to_diffusers=True)[: -len(".weight")]
            sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"] = down, up
        elif fmt == "ours":
            sd[f"{name}.lora_a"], sd[f"{name}.lora_b"] = down, up
            meta = {"sf_lora": json.dumps({"alpha": alpha, "rank": RANK})}
    save_file(sd, str(path), metadata=meta)
    return path


@pytest.fixture(scope="module")
def model():
    return randomize(CausalWanModel(TINY_DIT, attention="sdpa"), seed=2).eval()


def _ctx():
    return torch.randn(1, 5, TINY_DIT.text_dim, generator=torch.Generator().manual_seed(0))


def _stream(model, chunks=2, hook=None):
    pipe = StreamingPipeline(model, StreamConfig())
    state = pipe.start(_ctx(), 32, 32, seed=1, max_frames=3 * chunks)
    out = []
    for k in range(chunks):
        if hook is not None:
            hook(k, state)
        out.append(pipe.step(state).latents)
    return torch.cat(out, 1)


@pytest.mark.parametrize("fmt", ["kohya", "kohya_underscore", "peft_diffusers", "ours"])
def test_every_format_reads_the_same_layers_and_scale(model, tmp_path, fmt):
    adapters = _adapters()
    lora = read_lora(_write(tmp_path / f"{fmt}.safetensors", adapters, fmt), model)
    assert sorted(lora.layers) == sorted(TARGETS) and not lora.unmatched
    scale = 1.0 if fmt == "peft_diffusers" else 8.0 / RANK
    for name, (down, up) in adapters.items():
        assert lora.layers[name].scale == scale
        assert torch.allclose(lora.layers[name].delta(), up @ down * scale)


def test_merged_equals_unmerged_and_changes_the_output(model, tmp_path):
    lora = read_lora(_write(tmp_path / "a.safetensors", _adapters(), "kohya"), model)
    plain = _stream(model)
    hooks = UnmergedLoRA(model, [lora.layers], [0.7])
    unmerged = _stream(model)
    hooks.remove()
    assert torch.equal(_stream(model), plain)  # hooks gone
    backup = merge(model, [(lora.layers, 0.7)])
    merged = _stream(model)
    restore(model, backup)
    assert torch.equal(_stream(model), plain)  # weights restored exactly
    assert (merged - unmerged).abs().max() < 1e-4 and (merged - plain).abs().max() > 1e-2


def test_several_loras_add_up(model, tmp_path):
    a = read_lora(_write(tmp_path / "a.safetensors", _adapters(0), "kohya"), model)
    b = read_lora(_write(tmp_path / "b.safetensors", _adapters(1), "ours"), model)
    both = merge(model, [(a.layers, 0.5), (b.layers, -1.0)])
    w = model.get_submodule("blocks.0.ffn.0").weight.clone()
    restore(model, both)
    w0 = model.get_submodule("blocks.0.ffn.0").weight
    expected = w0 + 0.5 * a.layers["blocks.0.ffn.0"].delta() - b.layers["blocks.0.ffn.0"].delta()
    assert torch.allclose(w, expected, atol=1e-6)
    hooks = UnmergedLoRA(model, [a.layers, b.layers], [0.5, -1.0])
    unmerged = _stream(model, 1)
    hooks.remove()
    backup = merge(model, [(a.layers, 0.5), (b.layers, -1.0)])
    assert (_stream(model, 1) - unmerged).abs().max() < 1e-4
    restore(model, backup)


def test_strength_zero_and_zero_up_are_bit_identical(model, tmp_path):
    plain = _stream(model)
    lora = read_lora(_write(tmp_path / "a.safetensors", _adapters(), "kohya"), model)
    zero = read_lora(_write(tmp_path / "z.safetensors", _adapters(zero_up=True), "kohya"), model)
    for loras in ([(lora.layers, 0.0)], [(zero.layers, 1.0)]):
        backup = merge(model, loras)
        assert torch.equal(_stream(model), plain)
        restore(model, backup)
        hooks = UnmergedLoRA(model, [layers for layers, _ in loras], [s for _, s in loras])
        assert torch.equal(_stream(model), plain)
        hooks.remove()


def test_unmerged_strength_can_change_between_chunks(model, tmp_path):
    """Changing a cross-attention K/V LoRA's strength mid-stream recomputes the cached context K/V."""
    lora = read_lora(_write(tmp_path / "a.safetensors", _adapters(), "kohya"), model)
    hooks = UnmergedLoRA(model, [lora.layers], [0.0])
    assert hooks.touches_context_kv
    switched = _stream(model, 2, lambda k, state: hooks.set_strengths([0.0 if k == 0 else 1.0], state))
    hooks.remove()
    plain = _stream(model, 1)
    assert torch.equal(switched[:, :3], plain)

    def merge_at_1(k, state):  # the same switch done by merging the weights before chunk 1
        if k == 1:
            merge_at_1.backup = merge(model, [(lora.layers, 1.0)])
            state.cache.cross_ready = False
    reference = _stream(model, 2, merge_at_1)
    restore(model, merge_at_1.backup)
    assert (switched - reference).abs().max() < 1e-4 and not torch.allclose(switched[:, 3:], _stream(model)[:, 3:])


def test_unmatched_keys_are_reported_by_name(model, tmp_path):
    path = _write(tmp_path / "a.safetensors", _adapters(), "kohya")
    from safetensors.torch import load_file
    sd = load_file(str(path))
    sd["diffusion_model.blocks.0.self_attn.q.diff_b"] = torch.zeros(D)
    sd["diffusion_model.blocks.7.self_attn.q.lora_down.weight"] = torch.zeros(RANK, D)
    sd["diffusion_model.blocks.7.self_attn.q.lora_up.weight"] = torch.zeros(D, RANK)
    save_file(sd, str(path))
    lora = read_lora(path, model)
    assert sorted(lora.unmatched) == ["diffusion_model.blocks.0.self_attn.q.diff_b",
                                      "diffusion_model.blocks.7.self_attn.q.lora_down.weight",
                                      "diffusion_model.blocks.7.self_attn.q.lora_up.weight"]
    assert "3 key(s) match no layer" in lora.report() and "blocks.7.self_attn.q.lora_down" in lora.report()


def test_a_lora_for_another_model_is_refused_with_the_shapes(model, tmp_path):
    big = {"blocks.0.self_attn.q": (torch.zeros(RANK, 1536), torch.zeros(1536, RANK))}
    with pytest.raises(LoRAError, match=r"down \[4, 1536\] and up \[1536, 4\].*is \[64, 64\] \(out, in\).*another model"):
        read_lora(_write(tmp_path / "big.safetensors", big, "kohya"), model)
    save_file({"foo.lora_down.weight": torch.zeros(2, 3), "foo.lora_up.weight": torch.zeros(3, 2)},
              str(tmp_path / "other.safetensors"))
    with pytest.raises(LoRAError, match="none of its 2 keys matches a layer"):
        read_lora(tmp_path / "other.safetensors", model)
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(D, D)}, str(tmp_path / "dit.safetensors"))
    with pytest.raises(LoRAError, match="no LoRA keys"):
        read_lora(tmp_path / "dit.safetensors", model)


def test_text_encoder_layers_are_matched_when_the_file_has_them(model, tmp_path):
    umt5 = UMT5Encoder(TINY_UMT5).eval()
    d, inner = TINY_UMT5.dim, TINY_UMT5.num_heads * TINY_UMT5.head_dim
    sd = {"lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": torch.randn(2, d),
          "lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight": torch.randn(inner, 2),
          "diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.randn(2, D),
          "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.randn(F, 2)}
    save_file(sd, str(tmp_path / "te.safetensors"))
    lora = read_lora(tmp_path / "te.safetensors", model, umt5)
    assert list(lora.text_layers) == ["blocks.0.attn.q"] and list(lora.layers) == ["blocks.0.ffn.0"]
    without = read_lora(tmp_path / "te.safetensors", model)
    assert not without.text_layers and len(without.unmatched) == 2
    x = torch.randint(0, TINY_UMT5.vocab_size, (1, 6))
    mask = torch.ones(1, 6, dtype=torch.bool)
    before = umt5(x, mask)
    backup = merge(umt5, [(lora.text_layers, 1.0)])
    after = umt5(x, mask)
    restore(umt5, backup)
    assert not torch.allclose(before, after) and torch.equal(umt5(x, mask), before)
