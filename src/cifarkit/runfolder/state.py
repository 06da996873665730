"""What a run folder holds and whether it may be written:

- `run_state` / `check_run_dir` / `clear_run_dir`: "empty", "unfinished" or "finished", and refusing to
  clobber a run unless asked to.
- `ensure_writable`: a read-only or forbidden ``--out`` fails before any training, in one line.
- `interrupt_message`: after Ctrl-C / SIGTERM (see `signals`), what was saved and how to resume.
"""
from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Literal

from .checkpoint import CheckpointError, load_checkpoint
from .files import LAST, RESULTS, RUN_FILES
from .lock import RunDirError, _folder_error, _make_dirs, _remove_empty, advice
from .signals import SIGNAL_NAMES

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
    if (run_dir / RESULTS).is_file():  # checked first: deleting checkpoints must not expose results
        return "finished"
    return "unfinished" if checkpoint_epoch(run_dir / LAST) is not None else "empty"


def check_run_dir(run_dir: str | os.PathLike, overwrite: bool, speak: str = "cli") -> RunState:
    """Refuse a folder that holds a run unless `overwrite`; returns its state. One-line RunDirError, worded
    for `speak` ("cli": flags, "python": fit's arguments)."""
    run_dir = Path(run_dir)
    state = run_state(run_dir)
    if state == "unfinished" and not overwrite:
        last = run_dir / LAST
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


def interrupt_message(run_dir: str | os.PathLike, signum: int = signal.SIGINT, epoch: int | None = None,
                      speak: str = "cli") -> str:
    """What `fit` prints (to stderr) when stopped by `signum` during 1-based `epoch`: the epoch that really
    is in RUN/last.pt (read from the file) and how to resume (worded for `speak`), or that nothing can be
    resumed."""
    last = Path(run_dir) / LAST
    saved = checkpoint_epoch(last)
    during = f" during epoch {epoch}" if epoch is not None else ""
    head = f"Interrupted{during} by {SIGNAL_NAMES.get(signum, signal.Signals(signum).name)}"
    if saved is None:
        again = "the same command" if speak == "cli" else "the same call"
        return f"{head}: no epoch had finished; nothing to resume ({again} starts the run afresh)"
    return f"{head}: the checkpoint after epoch {saved} is {last}; {advice(speak, 'resume', last)}"
