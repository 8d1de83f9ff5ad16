"""The files one `sf_core.generate` run writes: `--out`, `--png-dir`, `--save-state`.

`check` runs with the options (also for `--dry-run`) and creates nothing; `open` claims `--out`,
`--png-dir` and `--save-state` exclusively before any model is loaded (the state's file stays an empty
placeholder until the state replaces it atomically); `release` closes the video and gives the claims
back (a claimed file that got nothing is removed).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sf_core.media import outputs
from sf_core.media.outputs import OutputError
from sf_core.media.recording import VideoRecorder

FRAME_NAME = "frame_{:06d}.png"


@contextmanager
def _signals_deferred():
    """Hold SIGINT / SIGTERM (delivered when the block ends) so a claim is never created but unrecorded.

    Python-level: the handlers are swapped for one that only notes the signal. (Blocking the main thread's
    signal mask is not enough: the kernel may hand a process-wide signal to any other thread, and Python
    then runs the handler in the main thread at once.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


def _same_file(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and a.absolute() == b.absolute()


@dataclass
class RunOutputs:
    out: Path
    png_dir: Path | None
    save_state: Path | None
    resume_state: Path | None
    overwrite: bool
    first_index: int = 0                      # number of the first PNG (frames written before a resume)
    _claims: list = field(default_factory=list)

    def check(self) -> None:
        """Every output can be written and replaces nothing without --overwrite (creates nothing)."""
        outputs.check_file("--out", self.out, self.overwrite)
        if self.png_dir is not None:
            outputs.check_folder("--png-dir", self.png_dir)
            first = self.png_dir / FRAME_NAME.format(self.first_index)
            if first.exists() and not self.overwrite:
                raise OutputError(f"--png-dir {self.png_dir}: already holds {first.name}; add --overwrite to "
                                  "replace its frames or choose another folder")
        if self.save_state is not None:
            if _same_file(self.save_state, self.out):
                raise OutputError(f"--save-state {self.save_state}: is also --out; give them different names")
            # continuing a stream in place (--resume-state s --save-state s) replaces it at the end
            outputs.check_file("--save-state", self.save_state, self.overwrite,
                               replaceable=_same_file(self.save_state, self.resume_state))

    def open(self, fps: float) -> VideoRecorder:
        """Claim the outputs (refused if another run holds them) and return the recorder writing them."""
        self.check()
        try:
            with _signals_deferred():  # a Ctrl-C / SIGTERM lands after the claim is recorded, never between
                self._claims.append(outputs.claim_file("--out", self.out, self.overwrite))
                if self.png_dir is not None:
                    self._claims.append(outputs.claim_folder("--png-dir", self.png_dir))
                if self.save_state is not None:  # an empty placeholder until the state replaces it at the end
                    self._claims.append(outputs.claim_file(
                        "--save-state", self.save_state,
                        self.overwrite or _same_file(self.save_state, self.resume_state)))
            return VideoRecorder(self.out, fps, self.png_dir, first_index=self.first_index)
        except BaseException:
            self.release(None)
            raise

    def release(self, recorder: VideoRecorder | None) -> None:
        """Close the video (errors propagate after the claims are released)."""
        try:
            if recorder is not None:
                recorder.close()
        finally:
            used = recorder is not None and recorder.frames_written > 0
            for claim in self._claims:
                claim.release(used and claim.path != self.save_state)
            self._claims.clear()
