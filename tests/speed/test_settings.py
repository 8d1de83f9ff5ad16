"""`off | safe | max` + switches -> concrete settings per device, and `accelerate` applying them."""
import pytest
import torch

from sf_core.config import StreamConfig
from sf_core.pipeline import StreamingPipeline
from sf_core.speed.graphs import FastForward
from sf_core.speed.settings import Capabilities, SpeedError, SpeedSettings, accelerate, resolve_speed
from sf_core.testing.tiny import TINY_DIT

CPU = Capabilities(cuda=False, compiler=False, fp8_matmul=False, flash=False, cudnn_attention=False, sm90=False)
H100 = Capabilities(cuda=True, compiler=True, fp8_matmul=True, flash=False, cudnn_attention=True, sm90=True)
A100_FLASH = Capabilities(cuda=True, compiler=True, fp8_matmul=False, flash=True, cudnn_attention=True, sm90=False)


def _resolve(level, caps, **over):
    return resolve_speed(level, "cpu", torch.bfloat16, over, caps)


def test_levels_per_device():
    assert _resolve("off", H100) == SpeedSettings("off")
    safe = _resolve("safe", H100)
    assert (safe.cuda_graphs, safe.overlap_decode, safe.skip_last_cache_pass) == (True, True, True)
    assert safe.output_preserving and not (safe.compile or safe.fp8 or safe.rope or safe.attention)
    cpu_safe = _resolve("safe", CPU)
    assert (cpu_safe.cuda_graphs, cpu_safe.overlap_decode, cpu_safe.skip_last_cache_pass) == (False, False, True)
    assert any("cuda graphs: off" in n for n in cpu_safe.notes)
    mx = _resolve("max", H100)
    assert (mx.compile, mx.cuda_graphs, mx.fp8, mx.rope, mx.attention) == (True, True, True, "fast", "cudnn")
    assert not mx.output_preserving and "bf16 tolerance" in mx.describe()
    a100 = _resolve("max", A100_FLASH)
    assert (a100.fp8, a100.attention) == (False, None)  # no fp8 tensor cores; flash-attn is the default kernel
    assert any("fp8: off" in n for n in a100.notes)
    cpu_max = _resolve("max", CPU)
    assert (cpu_max.compile, cpu_max.fp8, cpu_max.rope) == (False, False, "fast")


def test_explicit_switches_win_and_impossible_ones_are_refused():
    s = _resolve("safe", CPU, compile=True, overlap_decode=True)
    assert s.compile and s.overlap_decode and not any(n.startswith(("compile", "overlap")) for n in s.notes)
    assert not _resolve("max", H100, cuda_graphs=False, fp8=False).cuda_graphs
    with pytest.raises(SpeedError, match="--device cuda"):
        _resolve("off", CPU, cuda_graphs=True)
    with pytest.raises(SpeedError, match="8.9"):
        _resolve("off", A100_FLASH, fp8=True)
    with pytest.raises(SpeedError, match="expected one of"):
        _resolve("fastest", CPU)
    with pytest.raises(SpeedError, match="--attention cudnn: .*use 'sdpa'"):
        _resolve("safe", CPU, attention="cudnn")  # before any model loads, not at the first forward
    assert _resolve("safe", H100, attention="cudnn").attention == "cudnn"
    assert "identical" in _resolve("safe", CPU).describe()


def test_accelerate_overrides_rope_per_forward_and_reuses_its_forward(tiny_model):
    assert accelerate(tiny_model, SpeedSettings("off")) is tiny_model
    keys = set(tiny_model.state_dict())
    settings = _resolve("max", CPU)
    fast = accelerate(tiny_model, settings)
    assert isinstance(fast, FastForward) and accelerate(tiny_model, settings) is fast
    assert fast.model is tiny_model and fast.rope_mode == "fast" and tiny_model.rope == "exact"
    assert tiny_model._time_memo is not None, "the memo is turned on for inference"
    assert set(tiny_model.state_dict()) == keys, "the kept forward is no submodule"
    pipe = StreamingPipeline(fast, StreamConfig())
    state = pipe.start(torch.randn(1, 5, TINY_DIT.text_dim), 32, 32, seed=1, max_frames=3)
    x = pipe.step(state).latents
    ref_pipe = StreamingPipeline(tiny_model, StreamConfig())
    ref = ref_pipe.step(ref_pipe.start(state.context, 32, 32, seed=1, max_frames=3)).latents
    torch.testing.assert_close(x, ref, atol=1e-4, rtol=1e-4)  # fast RoPE in float32
    assert not torch.equal(x, ref), "the fast rotations were used"


def test_attention_is_set_in_place_for_callers_that_own_the_model(tiny_model):
    accelerate(tiny_model, _resolve("safe", CPU, attention="math"))
    assert {b.self_attn.backend for b in tiny_model.blocks} == {"math"}


def test_safe_output_is_bitwise_the_plain_path(tiny_model):
    outs = []
    for forward in (tiny_model, accelerate(tiny_model, _resolve("safe", CPU))):
        pipe = StreamingPipeline(forward, StreamConfig(window=6, sink=1))
        state = pipe.start(torch.randn(1, 5, TINY_DIT.text_dim, generator=torch.Generator().manual_seed(5)),
                           32, 32, seed=1)
        outs.append([pipe.step(state).latents for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_fp8_swaps_the_block_linears_once(tiny_model):
    try:
        fast = accelerate(tiny_model, SpeedSettings("max", fp8=True))
    except RuntimeError as e:  # pragma: no cover - depends on the torch build
        pytest.skip(f"fp8 unavailable: {e}")
    assert type(tiny_model.blocks[0].ffn[0]).__name__ == "Fp8Linear" and fast.model is tiny_model
    accelerate(tiny_model, SpeedSettings("max", fp8=True, rope="fast"))  # already fp8: not swapped again
    assert type(tiny_model.blocks[0].ffn[0]).__name__ == "Fp8Linear"
