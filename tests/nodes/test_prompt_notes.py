"""SF Text Encode cuts an over-long prompt like the command line and shows a short note on the node."""
import torch

from nodes.embedded import SFEmbeddedDefaultModel
from nodes.loaders import SFTextEncode

PROMPT = "a red circle moves left on a navy background"


def test_over_long_prompt_is_cut_and_noted_on_the_node():
    _, text_encoder, _, _ = SFEmbeddedDefaultModel().load("cpu")
    (short,) = SFTextEncode().encode(text_encoder, PROMPT)
    assert short.note is None
    long = ", ".join([PROMPT] * 4)  # 39 words; the toy encoder keeps 24
    out = SFTextEncode().encode(text_encoder, long)
    (context,) = out["result"]
    assert out["ui"]["text"] == [context.note] and "has 39 tokens; the text encoder keeps the first 24" in context.note
    assert long not in context.note
    kept = " ".join(long.replace(",", " , ").split()[:24])
    assert torch.equal(context.embedding, SFTextEncode().encode(text_encoder, kept)[0].embedding)
