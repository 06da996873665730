"""What a run folder holds and whether it may be written:

- `run_state` / `check_run_dir` / `clear_run_dir`: "empty", "unfinished", "finished" or "damaged",
  and refusing to clobber a run (or what is left of one) unless asked to.
- `ensure_writable`: a read-only or forbidden ``--out`` fails before any training, in one line.
- `interrupt_message`: after Ctrl-C / SIGTERM (see `signals`), what was saved and how to resume.
"""

from __future__ import annotations

import os
import shlex
import signal
import tempfile
from pathlib import Path
from typing import Literal

from .checkpoint import CheckpointError, load_checkpoint
from .files import BEST, CONFIG, HISTORY_CSV, HISTORY_JSON, LAST, RESULTS, RUN_FILES
from .lock import RunDirError, _folder_error, _make_dirs, _remove_empty, advice
from .signals import SIGNAL_NAMES

RunState = Literal["empty", "unfinished", "finished", "damaged"]


# ---------------------------------------------------------------------------------------- folder
# state
def checkpoint_epoch(path: str | os.PathLike) -> int | None:
    """The epoch stored in checkpoint `path`, or None if it is missing or cannot be loaded."""
    try:
        return int(load_checkpoint(path, mmap=True)["epoch"])
    except (CheckpointError, TypeError, ValueError):
        return None


def run_state(run_dir: str | os.PathLike) -> RunState:
    """ "finished" (results.json), "unfinished" (a loadable last.pt), "empty" (no run file at all,
    or only the config.json a run stopped during its first epoch leaves, which holds nothing a new
    run would not write again), or "damaged": a best.pt or history without a loadable last.pt
    (deleted, or half-synced from a drive). A damaged folder is never taken for an empty one:
    starting over would delete what can be read.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, not a folder")
    if (run_dir / RESULTS).is_file():  # checked first: deleting checkpoints must not expose results
        return "finished"
    if checkpoint_epoch(run_dir / LAST) is not None:
        return "unfinished"
    present = [n for n in RUN_FILES if n != CONFIG and os.path.lexists(run_dir / n)]
    return "damaged" if present else "empty"


def damaged_message(run_dir: str | os.PathLike, speak: str = "cli") -> str:
    """Why a "damaged" folder is refused, what it still holds and how to go on (worded for
    `speak`)."""
    run_dir = Path(run_dir)
    last = run_dir / LAST
    why = (
        "is missing"
        if not os.path.lexists(last)
        else "cannot be read (truncated, or still syncing?)"
    )
    kept = []
    best = checkpoint_epoch(run_dir / BEST)
    if best is not None:
        kept.append(f"{BEST} (after epoch {best})")
    kept += [n for n in (HISTORY_CSV, HISTORY_JSON) if (run_dir / n).exists()]
    if not kept:
        kept = [n for n in RUN_FILES if n != LAST and os.path.lexists(run_dir / n)]
    steps = [f"{advice(speak, 'overwrite')} to delete them and start again", advice(speak, "out")]
    if best is not None:  # best.pt is a full checkpoint: a run can go on from it
        where = os.path.abspath(run_dir / BEST)
        steps.insert(
            0,
            "continue from best.pt with "
            + (
                f"python -m cifarkit train --resume {shlex.quote(where)}"
                if speak == "cli"
                else f"fit(cfg, resume={where!r})"
            ),
        )
    return (
        f"{run_dir}'s {LAST} {why}, but the folder holds {', '.join(kept)}: nothing was changed; "
        f"{', '.join(steps[:-1])} or {steps[-1]}"
    )


def check_run_dir(run_dir: str | os.PathLike, overwrite: bool, speak: str = "cli") -> RunState:
    """Refuse a folder that holds a run unless `overwrite`; returns its state. One-line RunDirError,
    worded for `speak` ("cli": flags, "python": fit's arguments)."""
    run_dir = Path(run_dir)
    state = run_state(run_dir)
    if state == "unfinished" and not overwrite:
        last = run_dir / LAST
        raise RunDirError(
            f"{run_dir} already holds an unfinished run (last.pt after epoch"
            f" {checkpoint_epoch(last)}); {advice(speak, 'resume', last)}, or"
            f" {advice(speak, 'overwrite')} or {advice(speak, 'out')}"
        )
    if state == "finished" and not overwrite:
        raise RunDirError(
            f"{run_dir} already holds a finished run; {advice(speak, 'overwrite')} or "
            f"{advice(speak, 'out')}"
        )
    if state == "damaged" and not overwrite:
        raise RunDirError(damaged_message(run_dir, speak))
    return state


def remove_temp_files(run_dir: str | os.PathLike) -> None:
    """Remove ``.*.tmp`` files left by a process killed mid-write (never a real file; see
    atomic_write)."""
    for stale in Path(run_dir).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def clear_run_dir(run_dir: str | os.PathLike) -> None:
    """Remove the run's files (RUN_FILES and stale temp files); the lock and any other file stay."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    remove_temp_files(run_dir)


def ensure_writable(run_dir: str | os.PathLike) -> None:
    """Fail now, in one line, if files cannot be created in `run_dir` (read-only, permission, a
    file).

    Creates and removes a probe file; folders it had to create are removed again, so it leaves the
    file system as it found it.
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


def interrupt_message(
    run_dir: str | os.PathLike,
    signum: int = signal.SIGINT,
    epoch: int | None = None,
    speak: str = "cli",
) -> str:
    """What `fit` prints (to stderr) when stopped by `signum` during 1-based `epoch`: the epoch that
    really is in RUN/last.pt (read from the file) and how to resume (worded for `speak`), or that
    nothing can be resumed."""
    last = Path(run_dir) / LAST
    saved = checkpoint_epoch(last)
    during = f" during epoch {epoch}" if epoch is not None else ""
    head = f"Interrupted{during} by {SIGNAL_NAMES.get(signum, signal.Signals(signum).name)}"
    if saved is None:
        again = "the same command" if speak == "cli" else "the same call"
        return f"{head}: no epoch had finished; nothing to resume ({again} starts the run afresh)"
    text = f"{head}: the checkpoint after epoch {saved} is {last}; {advice(speak, 'resume', last)}"
    # one line, whatever the run folder's name holds (as the CLI's error line writes it)
    return text.replace("\n", "[newline]").replace("\r", "[return]")
