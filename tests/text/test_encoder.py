"""umT5 text encoder: numerics, both file layouts, scaled fp8, tokenizer behaviour, cache, bad inputs."""
import math
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import sentencepiece
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sf_core.text.encoder import (TextEncoder, TextEncoderError, comfy_to_official_key, official_to_comfy_key,
                          read_umt5_file)
from sf_core.testing.tiny import TINY_UMT5, make_tiny_umt5, tiny_spiece_model, tiny_umt5_state_dict
from sf_core.text.tokenizer import TokenizerError, UMT5Tokenizer, clean_whitespace
from sf_core.text.umt5 import UMT5_XXL, UMT5Encoder, relative_position_bucket

PROMPTS = ["A cat sleeps on a warm windowsill while rain taps the glass.", "", "Fireworks burst over a river!"]


# ---------------------------------------------------------------- independent reference implementations

def bucket_reference(rel: int, num_buckets: int, max_distance: int) -> int:
    """T5 bidirectional relative-position bucket, written out from the formula."""
    half = num_buckets // 2
    offset = half if rel > 0 else 0
    distance = abs(rel)
    exact = half // 2
    if distance < exact:
        return offset + distance
    log_bucket = exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact))
    return offset + min(log_bucket, half - 1)


def naive_umt5(sd, config, ids, mask):
    """One sequence through the umT5 encoder, head by head, straight from the T5 v1.1 definitions."""
    def rms(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + config.eps)

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    length, d = len(ids), config.head_dim
    buckets = torch.tensor([[bucket_reference(k - q, config.num_buckets, config.max_distance)
                             for k in range(length)] for q in range(length)])
    x = sd["token_embedding.weight"][ids]
    for i in range(config.num_layers):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (h @ sd[p + f"attn.{n}.weight"].T for n in "qkv")
        heads = []
        for head in range(config.num_heads):
            cols = slice(head * d, (head + 1) * d)
            scores = q[:, cols] @ k[:, cols].T + sd[p + "pos_embedding.embedding.weight"][buckets, head]
            scores[:, mask == 0] = float("-inf")
            heads.append(torch.softmax(scores, dim=-1) @ v[:, cols])
        x = x + torch.cat(heads, dim=1) @ sd[p + "attn.o.weight"].T
        h = rms(x, sd[p + "norm2.weight"])
        gated = gelu_tanh(h @ sd[p + "ffn.gate.0.weight"].T) * (h @ sd[p + "ffn.fc1.weight"].T)
        x = x + gated @ sd[p + "ffn.fc2.weight"].T
    return rms(x, sd["norm.weight"])


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def weights():
    return tiny_umt5_state_dict(TINY_UMT5, seed=1)


@pytest.fixture
def comfy_file(tmp_path, weights):
    return make_tiny_umt5(tmp_path / "umt5_xxl_fp16.safetensors", layout="comfy", state_dict=weights)


@pytest.fixture
def official_file(tmp_path, weights):
    return make_tiny_umt5(tmp_path / "wan" / "models_t5_umt5-xxl-enc-bf16.pth", layout="official",
                          state_dict=weights)


# ---------------------------------------------------------------- numerics

@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 32), (8, 20)])
def test_relative_position_bucket_matches_formula(num_buckets, max_distance):
    rel = torch.arange(-600, 601)
    got = relative_position_bucket(rel, num_buckets, max_distance)
    want = torch.tensor([bucket_reference(int(r), num_buckets, max_distance) for r in rel])
    assert torch.equal(got, want)
    assert got.min() >= 0 and got.max() < num_buckets
    assert (got[rel > 0] >= num_buckets // 2).all() and (got[rel <= 0] < num_buckets // 2).all()


def test_encoder_matches_naive_reference(weights):
    model = UMT5Encoder(TINY_UMT5)
    model.load_state_dict(weights)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TINY_UMT5.vocab_size, (2, 11), generator=gen)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        out = model(ids, mask)
    for row in range(2):
        want = naive_umt5(weights, TINY_UMT5, ids[row], mask[row])
        torch.testing.assert_close(out[row], want, atol=1e-5, rtol=1e-5)


def test_bfloat16_runs_close_to_float32(comfy_file):
    enc32 = TextEncoder.load(comfy_file, dtype=torch.float32)
    enc16 = TextEncoder.load(comfy_file, dtype=torch.bfloat16)
    a, b = enc32.encode(PROMPTS), enc16.encode(PROMPTS)
    assert b.dtype == torch.bfloat16
    assert (a - b.float()).abs().max() < 0.05 * a.abs().max()


def test_xxl_config_matches_published_parameter_counts():
    """formats.md §1: 5.68 B parameters, 4.63 B of them in the 168 Linear layers, 1.05 B in the embedding."""
    with torch.device("meta"):
        model = UMT5Encoder(UMT5_XXL)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 168
    assert round(sum(m.weight.numel() for m in linears) / 1e9, 2) == 4.63
    assert round(model.token_embedding.weight.numel() / 1e9, 2) == 1.05
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 5.68
    assert model.blocks[23].pos_embedding.embedding.weight.shape == (32, 64)


# ---------------------------------------------------------------- layouts

def test_key_maps_round_trip(weights):
    for key in weights:
        assert comfy_to_official_key(official_to_comfy_key(key)) == key
    assert comfy_to_official_key("encoder.block.0.layer.0.SelfAttention.q.scale_weight") is None


def test_both_layouts_load_identically(comfy_file, official_file, weights):
    sd_comfy, spiece_comfy = read_umt5_file(comfy_file)
    sd_official, spiece_official = read_umt5_file(official_file)
    assert spiece_comfy == tiny_spiece_model() and spiece_official is None
    assert sd_comfy.keys() == sd_official.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(sd_comfy[key], value) and torch.equal(sd_official[key], value)

    comfy = TextEncoder.load(comfy_file, dtype=torch.float32)
    official = TextEncoder.load(official_file, dtype=torch.float32)  # finds google/umt5-xxl/spiece.model
    assert comfy.model.config == official.model.config == TINY_UMT5
    a, b = comfy.encode(PROMPTS), official.encode(PROMPTS)
    assert a.shape == (3, 512, TINY_UMT5.dim)
    assert torch.equal(a, b)
    assert a[0, 0].abs().sum() > 0


def test_comfy_file_keys_are_hf_umt5_names(comfy_file):
    keys = set(load_file(str(comfy_file)))
    assert {"shared.weight", "encoder.final_layer_norm.weight", "spiece_model",
            "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
            "encoder.block.1.layer.1.DenseReluDense.wi_0.weight"} <= keys


def test_fp8_scaled_file_matches_float32_within_fp8_rounding(tmp_path, weights):
    path = make_tiny_umt5(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", fp8=True, state_dict=weights,
                          dtype=torch.float16)
    raw = load_file(str(path))
    assert raw["scaled_fp8"].dtype == torch.float8_e4m3fn
    assert raw["encoder.block.0.layer.1.DenseReluDense.wo.weight"].dtype == torch.float8_e4m3fn
    state_dict, _ = read_umt5_file(path, dtype=torch.float32)
    for key, original in weights.items():
        name = official_to_comfy_key(key)
        loaded = state_dict[key]
        if raw[name].dtype == torch.float8_e4m3fn:
            scale = raw[name[: -len("weight")] + "scale_weight"]
            assert scale.dim() == 0
            assert torch.equal(loaded, raw[name].float() * scale)
            # e4m3: 3 mantissa bits -> relative error <= 2^-4; subnormal spacing 2^-9 (times the scale)
            assert ((loaded - original).abs() <= original.abs() * 2 ** -4 + scale * 2 ** -9).all(), key
        else:
            assert torch.equal(loaded, original.half().float()), key
    assert read_umt5_file(path)[0]["blocks.0.attn.q.weight"].dtype == torch.float16  # dtype of the final norm

    fp8 = TextEncoder.load(path, dtype=torch.float32).encode(PROMPTS)
    dequantised = make_tiny_umt5(tmp_path / "dequantised.safetensors", state_dict=state_dict)
    assert torch.equal(fp8, TextEncoder.load(dequantised, dtype=torch.float32).encode(PROMPTS))


# ---------------------------------------------------------------- tokenizer, masking, padding

def test_clean_whitespace():
    assert clean_whitespace("  a &amp;amp; b \n\t c  ") == "a & b c"


def test_tokenizer_eos_padding_and_truncation():
    tok = UMT5Tokenizer(tiny_spiece_model(), seq_len=512)
    processor = sentencepiece.SentencePieceProcessor(model_proto=tiny_spiece_model())
    long_prompt = " ".join(["a red fox runs through deep snow"] * 120)
    pieces = processor.encode(long_prompt)
    assert len(pieces) > 600
    short = "two children fly a kite"
    ids, mask = tok([short, long_prompt, "  two   children\nfly a kite "])
    assert ids.shape == mask.shape == (3, 512)
    n = len(processor.encode(short))
    assert ids[0, :n].tolist() == processor.encode(short) and ids[0, n] == tok.eos_id == 1
    assert (ids[0, n + 1:] == tok.pad_id).all() and tok.pad_id == 0
    assert mask[0].sum() == n + 1 and mask[0, : n + 1].all()
    assert ids[1, :511].tolist() == pieces[:511] and ids[1, 511] == tok.eos_id and mask[1].all()
    assert torch.equal(ids[2], ids[0])
    ids, mask = UMT5Tokenizer(tiny_spiece_model(), seq_len=4)([short])
    assert ids[0].tolist() == processor.encode(short)[:3] + [1] and mask.all()


def test_outputs_zero_past_length_and_padding_has_no_influence(comfy_file):
    enc = TextEncoder.load(comfy_file, dtype=torch.float32, cache_size=0)
    long_prompt = " ".join(["horses gallop across an open plain"] * 100)
    out = enc.encode([PROMPTS[0], long_prompt])
    _, mask = enc.tokenizer([PROMPTS[0], long_prompt])
    length = int(mask[0].sum())
    assert (out[0, length:] == 0).all()
    assert (out[0, :length].abs().sum(-1) > 0).all()
    assert mask[1].all() and (out[1].abs().sum(-1) > 0).all()  # truncated to 512, all positions valid
    alone = enc.encode([PROMPTS[0]])
    torch.testing.assert_close(alone[0], out[0], atol=1e-5, rtol=1e-5)
    ids, mask = enc.tokenizer([PROMPTS[0]])
    with torch.no_grad():  # the official way: run all 512 positions, then zero past the length
        full = enc.model(ids, mask).masked_fill(~mask.bool()[..., None], 0.0)
    torch.testing.assert_close(alone, full, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- cache

def test_cache_reuses_and_evicts_least_recent(comfy_file):
    enc = TextEncoder.load(comfy_file, dtype=torch.float32, cache_size=2)
    batches = []
    enc.model.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    first = enc.encode(["a", "b", "a"])
    assert batches == [2] and torch.equal(first[0], first[2])
    first.zero_()  # the caller owns the result; the cache must not change
    again = enc.encode(["b", "a"])
    assert batches == [2] and again.abs().sum() > 0
    enc.encode(["c"])  # evicts the least recently used ("b")
    enc.encode(["a"])
    assert batches == [2, 1]
    enc.encode(["b"])
    assert batches == [2, 1, 1]
    fresh = TextEncoder.load(comfy_file, dtype=torch.float32, cache_size=0)
    assert torch.equal(fresh.encode(["b", "a"]), again)
    with pytest.raises(ValueError, match="at least one prompt"):
        fresh.encode([])


# ---------------------------------------------------------------- bad inputs

def test_missing_embedded_tokenizer_is_reported_and_override_works(tmp_path, weights):
    path = make_tiny_umt5(tmp_path / "te.safetensors", state_dict=weights, with_tokenizer=False)
    with pytest.raises(TokenizerError, match=r"spiece_model.*tokenizer="):
        TextEncoder.load(path)
    spiece = tmp_path / "tok" / "spiece.model"
    spiece.parent.mkdir()
    spiece.write_bytes(tiny_spiece_model())
    assert TextEncoder.load(path, tokenizer=spiece.parent).encode(["a"]).shape == (1, 512, TINY_UMT5.dim)


def test_official_without_tokenizer_folder(tmp_path, weights):
    path = make_tiny_umt5(tmp_path / "m.pth", layout="official", state_dict=weights, with_tokenizer=False)
    with pytest.raises(TokenizerError, match=r"google/umt5-xxl/spiece.model"):
        TextEncoder.load(path)
    (tmp_path / "google" / "umt5-xxl").mkdir(parents=True)
    (tmp_path / "google" / "umt5-xxl" / "tokenizer.json").write_text("{}")
    with pytest.raises(TokenizerError, match=r"tokenizer.json is there"):
        TextEncoder.load(path)


def test_invalid_tokenizer_bytes(tmp_path):
    bad = tmp_path / "spiece.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(TokenizerError, match=r"spiece.model.*not a valid SentencePiece"):
        UMT5Tokenizer.from_path(bad)


def test_tokenizer_larger_than_vocab(tmp_path, weights):
    small = {k: (v[:50] if k == "token_embedding.weight" else v) for k, v in weights.items()}
    path = make_tiny_umt5(tmp_path / "te.safetensors", state_dict=small)
    with pytest.raises(TokenizerError, match=r"128 pieces .* only 50"):
        TextEncoder.load(path)


def test_not_a_text_encoder(tmp_path):
    path = tmp_path / "dit.safetensors"
    save_file({"patch_embedding.weight": torch.zeros(4, 16, 1, 2, 2)}, str(path))
    with pytest.raises(TextEncoderError, match=r"not a umT5 text encoder.*shared.weight"):
        TextEncoder.load(path)


def test_missing_and_unknown_keys_are_named(tmp_path, comfy_file):
    tensors = load_file(str(comfy_file))
    missing = dict(tensors)
    del missing["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(TextEncoderError, match=r"encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight.*\[32, 48\]"):
        read_umt5_file(tmp_path / "missing.safetensors")
    extra = dict(tensors, **{"encoder.block.0.layer.2.foo.weight": torch.zeros(2)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(TextEncoderError, match=r"unexpected keys.*layer\.2\.foo"):
        read_umt5_file(tmp_path / "extra.safetensors")
    wrong = dict(tensors, **{"encoder.block.0.layer.0.layer_norm.weight": torch.ones(31)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(TextEncoderError, match=r"layer_norm.weight' has shape \[31\], expected \[32\]"):
        read_umt5_file(tmp_path / "wrong.safetensors")


@pytest.mark.parametrize("which", ["comfy", "official"])
def test_truncated_files(tmp_path, which, comfy_file, official_file):
    source = comfy_file if which == "comfy" else official_file
    data = source.read_bytes()
    path = tmp_path / f"truncated{source.suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TextEncoderError, match=r"truncated"):
        read_umt5_file(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({"token_embedding.weight": torch.zeros(2, 2), "payload": _RunsCode(str(marker))}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(TextEncoderError, match=r"refusing to load .*weights_only.*GLOBAL posix.mkdir"):
        read_umt5_file(path)
    assert not marker.exists()
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(TextEncoderError, match=r"refusing to load"):
        read_umt5_file(legacy)
    assert not marker.exists()


def test_missing_file():
    with pytest.raises(FileNotFoundError, match=r"no_such_umt5"):
        read_umt5_file(Path("/nonexistent/no_such_umt5.safetensors"))


def test_safetensors_header_reader_sees_real_dtypes(tmp_path, weights):
    path = make_tiny_umt5(tmp_path / "fp8.safetensors", fp8=True, state_dict=weights)
    with safe_open(str(path), framework="pt") as f:
        scale_keys = [k for k in f.keys() if k.endswith(".scale_weight")]
    assert len(scale_keys) == 7 * TINY_UMT5.num_layers  # q, k, v, o, wi_0, wi_1, wo per block
