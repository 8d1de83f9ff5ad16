"""umT5 SentencePiece tokenizer: prompt cleaning, EOS, padding and truncation to a fixed length.

Behaves like the official Wan path (`HuggingfaceTokenizer(seq_len=512, clean='whitespace')` over the
`google/umt5-xxl` T5 tokenizer): the cleaned prompt is encoded, truncated to `seq_len - 1` pieces, an EOS is
appended, and the row is right-padded with the pad id. The mask is 1 on real tokens (EOS included), 0 on padding.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import sentencepiece
import torch

from sf_core.text.limits import truncation_note

try:  # the official cleaning runs ftfy.fix_text first; it is optional here
    import ftfy
except ImportError:  # pragma: no cover - depends on the environment
    ftfy = None

SPIECE_FILE = "spiece.model"
# Where the Hugging Face tokenizer folder sits inside an official Wan model directory.
HF_TOKENIZER_SUBDIR = Path("google") / "umt5-xxl"


class TokenizerError(ValueError):
    """A tokenizer file is missing or unreadable."""


def clean_whitespace(text: str) -> str:
    """The official `clean='whitespace'`: ftfy (when installed), HTML unescape twice, collapse whitespace."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5Tokenizer:
    """SentencePiece tokenizer returning fixed-length id and mask rows."""

    def __init__(self, model_proto: bytes, seq_len: int = 512, source: str = "tokenizer"):
        if not model_proto:
            raise TokenizerError(f"{source}: the SentencePiece model is empty")
        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            self.processor.LoadFromSerializedProto(bytes(model_proto))
        except (RuntimeError, OSError) as exc:
            raise TokenizerError(f"{source}: not a valid SentencePiece model ({exc})") from exc
        self.eos_id = self.processor.eos_id()
        self.pad_id = self.processor.pad_id()
        if self.eos_id < 0 or self.pad_id < 0:
            raise TokenizerError(f"{source}: the SentencePiece model defines no eos/pad piece "
                                 f"(eos id {self.eos_id}, pad id {self.pad_id}); umT5 expects pad 0, eos 1")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len = seq_len
        self.source = source
        self.model_proto = bytes(model_proto)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    @classmethod
    def from_path(cls, path: str | Path, seq_len: int = 512) -> "UMT5Tokenizer":
        """Load `spiece.model`, given as the file, its folder, or an official Wan model folder."""
        return cls(Path(find_spiece_model(path)).read_bytes(), seq_len=seq_len, source=str(path))

    def token_ids(self, prompt: str) -> list[int]:
        """Cleaned, truncated ids of one prompt, ending with EOS (no padding)."""
        ids = self.processor.encode(clean_whitespace(prompt))
        return ids[: self.seq_len - 1] + [self.eos_id]

    def truncation(self, prompt: str) -> str | None:
        """A note when the prompt (with its EOS) is longer than `seq_len` and loses its end, else None."""
        return truncation_note(prompt, len(self.processor.encode(clean_whitespace(prompt))) + 1, self.seq_len)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `ids` and `mask`, both int64 `[B, seq_len]`."""
        ids = torch.full((len(prompts), self.seq_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), self.seq_len), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens = self.token_ids(prompt)
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        return ids, mask


def find_spiece_model(path: str | Path) -> Path:
    """Resolve a tokenizer path (file, folder with `spiece.model`, or Wan model folder) to the model file."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = [path / SPIECE_FILE, path / HF_TOKENIZER_SUBDIR / SPIECE_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    if not path.exists():
        raise TokenizerError(f"tokenizer path {path} does not exist")
    hint = ""
    if (path / "tokenizer.json").is_file() or (path / HF_TOKENIZER_SUBDIR / "tokenizer.json").is_file():
        hint = (" A tokenizer.json is there, but sf_core reads the SentencePiece model: copy 'spiece.model' "
                "from the google/umt5-xxl repository next to it.")
    raise TokenizerError(f"no SentencePiece model found for {path} (looked for {searched}).{hint}")
