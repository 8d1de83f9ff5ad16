"""One rule for prompts longer than a text encoder takes, for umT5 (511 pieces + EOS, like the official Wan
path) and the toy encoder (its `max_len` words) alike: the end is cut off, and a short note says so. Notes and
errors quote the start of a prompt, never all of it."""
from __future__ import annotations

QUOTE_CHARS = 48


def quote(prompt: str) -> str:
    """The start of a prompt for a message, e.g. 'a red fox trotting through…' (never the whole of a long one)."""
    return repr(prompt if len(prompt) <= QUOTE_CHARS else prompt[:QUOTE_CHARS] + "…")


def truncation_note(prompt: str, tokens: int, limit: int) -> str | None:
    """None if `tokens` fit in `limit`, else what was cut."""
    if tokens <= limit:
        return None
    return f"prompt {quote(prompt)} has {tokens} tokens; the text encoder keeps the first {limit}"
