"""The fixed toy text encoder."""
import pytest
import torch

from sf_core.toy.text import MAX_TOKENS, VOCAB, ToyTextEncoder, tokenize
from sf_core.toy.world import sample_scenes


def test_context_shape_padding_and_determinism():
    prompts = [s.prompt for s in sample_scenes(8, 0)]
    enc = ToyTextEncoder(text_dim=32, max_len=24, seed=0)
    ctx = enc(prompts)
    assert ctx.shape == (8, 24, 32) and ctx.dtype == torch.float32
    for b, p in enumerate(prompts):
        n = len(tokenize(p))
        assert torch.all(ctx[b, n:] == 0) and torch.all(ctx[b, :n].abs().sum(-1) > 0)
    assert torch.equal(ctx, ToyTextEncoder(text_dim=32, max_len=24, seed=0)(prompts))
    assert not torch.allclose(ctx, ToyTextEncoder(text_dim=32, max_len=24, seed=1)(prompts))
    assert 0.7 < float(ctx[ctx.abs().sum(-1) > 0].std()) < 1.3


def test_distinct_prompts_give_distinct_contexts():
    enc = ToyTextEncoder()
    a = enc("a red circle moves left and a blue square pulses on a black background")
    b = enc("a blue circle moves left and a red square pulses on a black background")  # colours swapped
    c = enc("a red circle moves right and a blue square pulses on a black background")
    assert (a - b).abs().max() > 0.1 and (a - c).abs().max() > 0.1
    # the same word in the same position and segment gives the same vector
    assert torch.equal(a[0, :3], c[0, :3])


def test_word_embeddings_do_not_depend_on_the_vocabulary_order():
    enc = ToyTextEncoder(text_dim=16)
    words = enc.words
    assert words.shape == (len(VOCAB), 16)
    gram = words @ words.T / 16
    off = gram - torch.diag(torch.diag(gram))
    assert off.abs().max() < 1.2          # random vectors: no two words collapse onto each other
    assert torch.allclose(torch.diag(gram), torch.ones(len(VOCAB)), atol=0.9)


def test_errors_are_actionable():
    enc = ToyTextEncoder()
    with pytest.raises(ValueError, match="unknown words.*'pink'"):
        enc("a pink circle moves left on a black background")
    with pytest.raises(ValueError, match="max_len"):
        ToyTextEncoder(max_len=MAX_TOKENS - 1)
    longest = ("a red circle stays still, a blue square stays still and a green triangle stays still "
               "on a black to navy gradient")
    assert len(tokenize(longest)) == MAX_TOKENS
    assert enc(longest).shape == (1, 24, 64)
