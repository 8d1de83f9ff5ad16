"""Is a safetensors file whole? Header and size only: no tensor is read.

A safetensors file is 8 bytes of header length n, n bytes of JSON (name → dtype, shape, byte range),
then the data; a file cut short (a crash before its bytes reached the disk, a full disk, a partial
copy) is shorter than the end of its last byte range. At 1.3B this reads ~100 kB per file, not GBs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the safetensors file `path` (missing, truncated, bad header), else None."""
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > MAX_HEADER or size < 8 + n:
                return f"{path} is truncated or not safetensors ({size} bytes)"
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"{path} has an unreadable header ({type(exc).__name__}: {exc})"
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"{path} is truncated ({size} bytes, its header describes {expected})"
    return None
