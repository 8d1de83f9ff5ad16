"""A fixed, deterministic text encoder for toy prompts (the umT5 stand-in).

Each token i of a prompt becomes ``(word(w_i) + position(i) + segment(s_i)) / sqrt(3)`` where every
embedding is a fixed pseudo-random standard-normal vector derived from a hash of ``(seed, name)``:
no weights, nothing trained, identical on every machine and torch/numpy version (SHA-256 + Box-Muller
in plain Python), and adding a word to the vocabulary never changes the others. The segment index counts
the separators (",", "and", "on") seen so far, so the words of one object share a segment vector — this
lets the DiT's cross-attention bind colour, shape and motion of the same object. The text is fixed
rather than trainable so that teacher, students and the shipped checkpoint all see the same context.

Output ``[B, L, text_dim]`` float32 with rows past the prompt's length set to 0.0, as umT5 does; the DiT
pads it further to its ``text_len`` (use ``ModelConfig(text_dim=encoder.text_dim, text_len=encoder.max_len)``).
"""
from __future__ import annotations

import hashlib
import math
import struct

import torch

from sf_core.text.limits import truncation_note

from .world import BACKGROUND_COLOURS, MOTION_PHRASES, OBJECT_COLOURS, SHAPES

SEPARATORS = (",", "and", "on")
VOCAB = tuple(sorted(
    {"a", "an", "background", "to", "gradient", *SEPARATORS, *OBJECT_COLOURS, *BACKGROUND_COLOURS, *SHAPES}
    | {w for phrase in MOTION_PHRASES.values() for w in phrase.split()}))
MAX_TOKENS = 23  # longest grammatical prompt: three "stays still" objects on a gradient


def tokenize(prompt: str) -> list[str]:
    """Lower-case words, with ',' as its own token; unknown words raise a ValueError naming the vocabulary."""
    tokens = prompt.lower().replace(",", " , ").split()
    unknown = [t for t in tokens if t not in VOCAB]
    if unknown:
        raise ValueError(f"toy text encoder: unknown words {unknown[:10]} in the prompt; vocabulary: {list(VOCAB)}")
    return tokens


def _gaussian(seed: int, name: str, dim: int) -> torch.Tensor:
    """A fixed standard-normal vector [dim] from SHA-256 counter blocks and the Box-Muller transform."""
    uniforms = []
    counter = 0
    while len(uniforms) < dim + dim % 2:
        digest = hashlib.sha256(f"{seed}:{name}:{counter}".encode()).digest()
        uniforms += [(v + 0.5) / 2 ** 32 for v in struct.unpack("<8I", digest)]
        counter += 1
    out = []
    for u1, u2 in zip(uniforms[0::2], uniforms[1::2]):
        rad = math.sqrt(-2 * math.log(u1))
        out += [rad * math.cos(2 * math.pi * u2), rad * math.sin(2 * math.pi * u2)]
    return torch.tensor(out[:dim], dtype=torch.float32)


class ToyTextEncoder:
    """``encoder(prompts) -> context [B, max_len, text_dim]``; fixed embeddings, see the module docstring."""

    def __init__(self, text_dim: int = 64, max_len: int = 24, seed: int = 0):
        if max_len < MAX_TOKENS:
            raise ValueError(f"ToyTextEncoder: max_len {max_len} < {MAX_TOKENS}, the longest toy prompt")
        self.text_dim, self.max_len, self.seed = text_dim, max_len, seed
        self.words = torch.stack([_gaussian(seed, f"word:{w}", text_dim) for w in VOCAB])          # [V, D]
        self.positions = torch.stack([_gaussian(seed, f"pos:{i}", text_dim) for i in range(max_len)])
        self.segments = torch.stack([_gaussian(seed, f"seg:{i}", text_dim) for i in range(max_len)])

    def ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, segment ids [B, L] (0 past the end) and lengths [B]."""
        ids = torch.zeros(len(prompts), self.max_len, dtype=torch.long)
        seg = torch.zeros_like(ids)
        lengths = torch.zeros(len(prompts), dtype=torch.long)
        for b, prompt in enumerate(prompts):
            tokens = tokenize(prompt)[: self.max_len]  # like umT5: the end of an over-long prompt is cut
            s = 0
            for i, t in enumerate(tokens):
                s += t in SEPARATORS
                ids[b, i], seg[b, i] = VOCAB.index(t), s
            lengths[b] = len(tokens)
        return ids, seg, lengths

    def truncation(self, prompt: str) -> str | None:
        """A note when `prompt` has more words than `max_len` and loses its end (sf_core.text.limits), else None."""
        return truncation_note(prompt, len(tokenize(prompt)), self.max_len)

    def __call__(self, prompts: list[str] | str, device: torch.device | str | None = None) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids, seg, lengths = self.ids(prompts)
        x = (self.words[ids] + self.positions.unsqueeze(0) + self.segments[seg]) / math.sqrt(3)  # [B, L, D]
        valid = torch.arange(self.max_len).unsqueeze(0) < lengths.unsqueeze(1)                    # [B, L]
        return (x * valid.unsqueeze(-1)).to(device)
