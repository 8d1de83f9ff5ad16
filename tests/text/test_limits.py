"""Over-long prompts: umT5 and the toy encoder both keep the start, cut the end and say so in a short note."""
import torch

from sf_core.testing.tiny import TINY_UMT5, make_tiny_umt5
from sf_core.text.encoder import TextEncoder
from sf_core.text.limits import quote
from sf_core.toy.text import ToyTextEncoder


def test_umt5_keeps_the_first_pieces_and_notes_the_cut(tmp_path):
    encoder = TextEncoder.load(make_tiny_umt5(tmp_path / "umt5.safetensors"), dtype=torch.float32, seq_len=12)
    tokenizer = encoder.tokenizer
    long = "a red fox runs through deep snow under a pale winter sky while two children fly a kite " * 3
    kept = tokenizer.processor.decode(tokenizer.token_ids(long)[:-1])  # the 11 pieces umT5 keeps (+ EOS)
    assert encoder.truncation("a red fox") is None and encoder.truncation(kept) is None
    note = encoder.truncation(long)
    assert note.endswith("the text encoder keeps the first 12") and long not in note and len(note) < 140
    assert torch.equal(encoder.encode(long), encoder.encode(kept))


def test_toy_encoder_cuts_like_umt5_instead_of_failing():
    encoder = ToyTextEncoder(max_len=24)
    prompt = "a red circle moves left on a navy background"
    long = ", ".join([prompt] * 4)  # 39 words
    assert encoder.truncation(prompt) is None
    note = encoder.truncation(long)
    assert note.startswith("prompt 'a red circle moves left on a navy background, a …'") and "39 tokens" in note
    kept = " ".join(long.replace(",", " , ").split()[:24])
    assert torch.equal(encoder(long), encoder(kept))


def test_quotes_never_repeat_a_whole_long_prompt():
    assert quote("short") == "'short'"
    assert quote("x" * 500) == repr("x" * 48 + "…")


def test_schedule_and_toy_prompt_errors_quote_only_the_start():
    import pytest

    from sf_core.media.timing import ScheduleError, parse_schedule
    from sf_core.toy.world import PromptError, parse_prompt

    long = "a cat " * 100
    with pytest.raises(ScheduleError) as bad_line:
        parse_schedule("4s " + long)
    with pytest.raises(PromptError) as bad_prompt:
        parse_prompt(long)
    for error in (bad_line.value, bad_prompt.value):
        assert long.strip() not in str(error) and "…" in str(error)
