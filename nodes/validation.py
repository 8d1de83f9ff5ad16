"""Checks of the stream nodes' widget values that ComfyUI runs when a prompt is queued (`VALIDATE_INPUTS`), before
any model loads. Each returns None or a one-line message naming the input, what it got and what it needs.
Inputs fed by links are None at validation time and are checked when the node runs."""
from __future__ import annotations

from .choices import Choice

SIZE_STEP = 16       # the DiT's patch (2) × the Wan VAE stride (8)
MAX_SIZE = 4096
LENGTH_UNITS = ["seconds", "frames", "chunks"]


def size_problem(width, height) -> str | None:
    for name, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if not SIZE_STEP <= value <= MAX_SIZE or value % SIZE_STEP:
            return (f"{name} {value} is not a multiple of {SIZE_STEP} between {SIZE_STEP} and {MAX_SIZE} "
                    f"(Self Forcing was trained at 832×480)")
    return None


def requested_amount(length: float, unit: str, fps: float | None) -> int | None:
    """Whole frames (seconds, frames) or chunks asked for; None when seconds come without a known fps."""
    if unit == "seconds":
        return None if fps is None else round(length * fps)
    return round(length)


def length_problem(length, unit, fps=None) -> str | None:
    if length is None or unit is None:
        return None
    if unit not in LENGTH_UNITS:
        return f"length_unit {unit!r} is not one of {LENGTH_UNITS}"
    amount = requested_amount(length, unit, fps)
    if length <= 0 or amount is not None and amount < 1:
        what = "chunk" if unit == "chunks" else "frame"
        at = f" at {fps:g} fps" if unit == "seconds" and fps else ""
        return f"length {length:g} {unit}{at} makes no {what}; ask for at least one {what}"
    return None


def choice_problem(choice: Choice, value) -> str | None:
    if value is None:
        return None
    try:
        choice.parse(value)
    except ValueError as error:
        return str(error)
    return None


def first_problem(*problems: str | None) -> bool | str:
    """What VALIDATE_INPUTS returns: True, or the first problem found."""
    return next((p for p in problems if p), True)


def range_problem(name: str, value, low, high) -> str | None:
    if value is None or low <= value <= high:
        return None
    return f"{name} {value:g} is outside {low:g}..{high:g}"


def legacy_combo_problem(name: str, value, options: list[str]) -> str | None:
    """A menu added after graphs were saved: '' (the preview widget's slot in those graphs, which the frontend
    hands to the new menu) means its default; anything else must be an option."""
    if value in (None, "") or value in options:
        return None
    return f"{name}: {value!r} is not one of {options}"
