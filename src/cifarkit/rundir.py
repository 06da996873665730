"""The run folder's safety: one owner at a time, what it holds, a writable place, and stopping cleanly.

- `RunLock`: an exclusive lock (``RUN/.lock``) held for the whole run; the OS drops it when the process
  dies, so even a SIGKILLed run leaves no stale lock. A second writer fails at once with one line.
- `run_state` / `check_run_dir` / `clear_run_dir`: "empty", "unfinished" or "finished", and refusing to
  clobber a run unless asked to.
- `ensure_writable`: a read-only or forbidden ``--out`` fails before any training, in one line.
- `StopSignals`: Ctrl-C and SIGTERM stop training at once, except inside `critical()` sections (checkpoint
  and history writes), which always complete first; `interrupt_message` says what was saved.
"""
from __future__ import annotations

import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from .checkpoint import CheckpointError, load_checkpoint
from .runlock import (LOCK_NAME, RunDirError, RunLock, _folder_error, _make_dirs, _remove_empty,  # noqa: F401
                      advice)

RUN_FILES = ("config.json", "history.csv", "history.json", "last.pt", "best.pt", "results.json")
RunState = Literal["empty", "unfinished", "finished"]


# ---------------------------------------------------------------------------------------- folder state
def checkpoint_epoch(path: str | os.PathLike) -> int | None:
    """The epoch stored in checkpoint `path`, or None if it is missing or cannot be loaded."""
    try:
        return int(load_checkpoint(path, mmap=True)["epoch"])
    except (CheckpointError, TypeError, ValueError):
        return None


def run_state(run_dir: str | os.PathLike) -> RunState:
    """"finished" (results.json), "unfinished" (a loadable last.pt) or "empty".

    A folder whose last.pt is missing or unloadable holds nothing to resume: a stale config.json or
    history from a run stopped before its first checkpoint does not make it a run.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, not a folder")
    if (run_dir / "results.json").is_file():  # checked first: deleting checkpoints must not expose results
        return "finished"
    return "unfinished" if checkpoint_epoch(run_dir / "last.pt") is not None else "empty"


def check_run_dir(run_dir: str | os.PathLike, overwrite: bool, speak: str = "cli") -> RunState:
    """Refuse a folder that holds a run unless `overwrite`; returns its state. One-line RunDirError, worded
    for `speak` ("cli": flags, "python": fit's arguments)."""
    run_dir = Path(run_dir)
    state = run_state(run_dir)
    if state == "unfinished" and not overwrite:
        last = run_dir / "last.pt"
        raise RunDirError(f"{run_dir} already holds an unfinished run (last.pt after epoch {checkpoint_epoch(last)}); "
                          f"{advice(speak, 'resume', last)}, or {advice(speak, 'overwrite')} or "
                          f"{advice(speak, 'out')}")
    if state == "finished" and not overwrite:
        raise RunDirError(f"{run_dir} already holds a finished run; {advice(speak, 'overwrite')} or "
                          f"{advice(speak, 'out')}")
    return state


def remove_temp_files(run_dir: str | os.PathLike) -> None:
    """Remove ``.*.tmp`` files left by a process killed mid-write (never a real file; see atomic_write)."""
    for stale in Path(run_dir).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def clear_run_dir(run_dir: str | os.PathLike) -> None:
    """Remove the run's files (RUN_FILES and stale temp files); the lock and any other file stay."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    remove_temp_files(run_dir)


def ensure_writable(run_dir: str | os.PathLike) -> None:
    """Fail now, in one line, if files cannot be created in `run_dir` (read-only, permission, a file).

    Creates and removes a probe file; folders it had to create are removed again, so it leaves the file
    system as it found it.
    """
    run_dir = Path(run_dir)
    created: list[Path] = []
    try:
        created = _make_dirs(run_dir)
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-probe.", suffix=".tmp")
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise _folder_error(run_dir, e) from None
    finally:
        _remove_empty(created)


# ------------------------------------------------------------------------------------------ stopping
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run. A KeyboardInterrupt, so existing handlers still catch it.

    `exit_code` is the shell convention 128 + signal number: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, signum: int):
        super().__init__(SIGNAL_NAMES.get(signum, signal.Signals(signum).name))
        self.signum = signum
        self.exit_code = 128 + int(signum)


class StopSignals:
    """``with StopSignals() as stop:`` turns SIGINT / SIGTERM into RunInterrupted, raised at once, except
    inside ``with stop.critical():``, where the signal is remembered and raised when the section ends, so a
    checkpoint or history write is never cut short (a second signal there is deferred too).

    Only the main thread can own signal handlers: elsewhere this does nothing. The previous handlers are
    restored on exit. Once a RunInterrupted was raised, later signals are ignored while the run unwinds
    (SIGKILL still works, and atomic writes make it safe).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.pending: int | None = None    # a signal deferred by a critical section
        self.received: int | None = None   # the first signal, once one arrived
        self._depth = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            # None: the old handler was not installed from Python and cannot be put back; use the default
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = self.received or signum
        if self._depth > 0:
            self.pending = self.pending or signum
        elif first:
            raise RunInterrupted(signum)

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A section no signal interrupts; a signal that arrives during it is raised right after it."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self.pending is not None:
            signum, self.pending = self.pending, None
            raise RunInterrupted(signum)


def interrupt_message(run_dir: str | os.PathLike, signum: int = signal.SIGINT, epoch: int | None = None,
                      speak: str = "cli") -> str:
    """What `fit` prints (to stderr) when stopped by `signum` during 1-based `epoch`: the epoch that really
    is in RUN/last.pt (read from the file) and how to resume (worded for `speak`), or that nothing can be
    resumed."""
    last = Path(run_dir) / "last.pt"
    saved = checkpoint_epoch(last)
    during = f" during epoch {epoch}" if epoch is not None else ""
    head = f"Interrupted{during} by {SIGNAL_NAMES.get(signum, signal.Signals(signum).name)}"
    if saved is None:
        again = "the same command" if speak == "cli" else "the same call"
        return f"{head}: no epoch had finished; nothing to resume ({again} starts the run afresh)"
    return f"{head}: the checkpoint after epoch {saved} is {last}; {advice(speak, 'resume', last)}"
