"""Output files a run writes: checked before any work, claimed exclusively while it runs.

`check_file` / `check_folder` only look (a dry run can call them); `claim_file` / `claim_folder` create
the target and hold an exclusive lock on it (`flock`, where the OS has it) until `release`, so a second
run writing the same output is refused at its start instead of corrupting the first one's file. A
claimed file that received nothing is removed again on release when this run created it.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: exclusive creation only
    fcntl = None


class OutputError(RuntimeError):
    """An output cannot be written; `str()` is one line naming the option and the path."""


def reason(exc: Exception) -> str:
    """'No space left on device' for an OSError, or the OS error inside another library's message."""
    if isinstance(exc, OSError):
        return exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    found = re.search(r"I/O error: (.*?) \(os error \d+\)", str(exc))  # safetensors' SafetensorError
    return found.group(1) if found else str(exc)


def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_parent(option: str, path: Path) -> None:
    ancestor = _first_existing(path.parent)
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, not a folder; choose a path in a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot write in {ancestor} (permission denied)")


def check_file(option: str, path: Path, overwrite: bool, replaceable: bool = False) -> None:
    """`path` can become a new file (or replace an old one with `overwrite` / `replaceable`)."""
    if path.is_dir():
        example = path / ("output.mp4" if path.suffix == "" and option == "--out" else "stream.safetensors")
        raise OutputError(f"{option} {path}: is a folder; give a file name such as {example}")
    if path.exists() and not (overwrite or replaceable):
        raise OutputError(f"{option} {path}: already exists; add --overwrite to replace it or choose another name")
    _check_parent(option, path)


def check_folder(option: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a folder")
    _check_parent(option, path)


def _lock(fd: int, option: str, path: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputError(f"{option} {path}: another run is writing it right now; wait for it or choose "
                              "another name") from None
        raise


class Claim:
    """An output held by this run: an open, locked descriptor; `release()` unlocks (and tidies up)."""

    def __init__(self, path: Path, fd: int, created: bool, folder: bool):
        self.path, self._fd, self.created, self.folder = path, fd, created, folder

    def release(self, used: bool = True) -> None:
        """Unlock; a file this run created but never used is removed."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if not used and self.created and not self.folder:
            try:  # still our empty file (not yet replaced by a finished output)
                st, ours = os.stat(self.path), os.fstat(fd)
                if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino) and st.st_size == 0:
                    os.unlink(self.path)
            except OSError:
                pass
        os.close(fd)


def _open(option: str, path: Path, flags: int) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o666)
    except FileExistsError:
        raise OutputError(f"{option} {path}: already exists (another run may have just created it); add "
                          "--overwrite to replace it or choose another name") from None
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot create it ({reason(exc)})") from None


def claim_file(option: str, path: Path, overwrite: bool) -> Claim:
    """Create `path` exclusively (or open it for replacing with `overwrite`) and lock it; its content is
    left to the writer (an old file stays untouched until the writer truncates it)."""
    check_file(option, path, overwrite)
    existed = path.exists()
    fd = _open(option, path, os.O_WRONLY | os.O_CREAT | (0 if overwrite else os.O_EXCL))
    try:
        _lock(fd, option, path)
    except BaseException:
        os.close(fd)
        if not existed:
            os.unlink(path)
        raise
    return Claim(path, fd, not existed, folder=False)


def claim_folder(option: str, path: Path) -> Claim:
    """Create the folder `path` if needed, prove it writable, and lock it."""
    check_folder(option, path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".sf_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write in it ({reason(exc)})") from None
    try:
        _lock(fd, option, path)
    except BaseException:
        os.close(fd)
        raise
    return Claim(path, fd, created=False, folder=True)
