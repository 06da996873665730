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

import errno
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from .checkpoint import CheckpointError, load_checkpoint
from .config import CifarkitError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None

LOCK_NAME = ".lock"
RUN_FILES = ("config.json", "history.csv", "history.json", "last.pt", "best.pt", "results.json")
RunState = Literal["empty", "unfinished", "finished"]


class RunDirError(CifarkitError):
    """The run folder cannot be used: in use by another run, holds a run, is a file, is not writable."""


def _folder_error(run_dir: Path, e: OSError) -> RunDirError:
    """One line for an OSError met while creating or probing `run_dir`."""
    if e.errno == errno.EROFS:
        return RunDirError(f"{run_dir} is on a read-only file system; choose another --out")
    if e.errno in (errno.EACCES, errno.EPERM):
        return RunDirError(f"permission denied: cannot write in {run_dir}; choose another --out")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return RunDirError(f"--out {run_dir} is a file, not a folder (or lies under one)")
    if e.errno == errno.ENOSPC:
        return RunDirError(f"no space left on device in {run_dir}")
    return RunDirError(f"cannot write in {run_dir}: {e.strerror or e}")


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p `path`; returns the folders it created, outermost first (so they can be removed again)."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _remove_empty(dirs: list[Path]) -> None:
    """Remove folders this process created, innermost first, as long as they are empty."""
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            return  # not empty (the run wrote files) or gone: leave it and its parents


class RunLock:
    """Exclusive ownership of a run folder: ``with RunLock(run_dir): ...`` (or acquire() / release()).

    flock on ``RUN/.lock`` (which holds the owner's pid): the OS releases it when the process dies, however
    it dies. Locks belong to the open file, so two RunLock objects conflict even within one process.
    Acquiring creates the folder if needed; releasing removes the lock file, and the folders acquire()
    created if they are still empty (a run that failed during setup leaves nothing behind).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.run_dir} is already locked by this RunLock")
        for _ in range(20):  # retried only when the owner removes the file or folder under us
            try:
                self._created += _make_dirs(self.run_dir)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # a finishing run removed its empty folder between our mkdir and open
            except OSError as e:
                _remove_empty(self._created)
                raise _folder_error(self.run_dir, e) from None
            try:
                locked = _try_lock(fd)
            except BaseException as e:
                os.close(fd)
                _remove_empty(self._created)
                raise _folder_error(self.run_dir, e) if isinstance(e, OSError) else e from None
            if not locked:
                pid = _read_pid(fd)
                os.close(fd)
                raise RunDirError(f"{self.run_dir} is in use by another cifarkit run ({pid}); "
                                  f"wait for it or choose another --out")
            if fcntl is None or _same_file(fd, self.path):
                self._fd = fd
                try:  # the pid is only for the message a second run prints
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError as e:
                    self.release()
                    raise _folder_error(self.run_dir, e) from None
                return self
            os.close(fd)  # we locked a file its owner had just removed: lock the current one instead
        raise RunDirError(f"cannot lock {self.run_dir}: its lock file keeps changing")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if fcntl is not None:  # unlink while still holding it: waiters notice the file is gone and retry
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
                _remove_empty(self._created)
        finally:
            os.close(self._fd)  # closing drops the lock
            self._fd, self._created = None, []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on `fd`; False if another open file holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return True  # a file system without locks (some NFS setups): run unlocked rather than not at all
            raise
        return True
    if msvcrt is not None:  # Windows (untested here): lock one byte past the pid, so others can still read it
        os.lseek(fd, 4096, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True
    return True  # no locking primitive at all: nothing to enforce with


def _read_pid(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


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


def check_run_dir(run_dir: str | os.PathLike, overwrite: bool) -> RunState:
    """Refuse a folder that holds a run unless `overwrite`; returns its state. One-line RunDirError."""
    run_dir = Path(run_dir)
    state = run_state(run_dir)
    if state == "unfinished" and not overwrite:
        last = run_dir / "last.pt"
        raise RunDirError(f"{run_dir} already holds an unfinished run (last.pt after epoch {checkpoint_epoch(last)}); "
                          f"resume with --resume {last}, or pass --overwrite or choose another --out")
    if state == "finished" and not overwrite:
        raise RunDirError(f"{run_dir} already holds a finished run; pass --overwrite or choose another --out")
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


def interrupt_message(run_dir: str | os.PathLike, signum: int = signal.SIGINT, epoch: int | None = None) -> str:
    """What `fit` prints (to stderr) when stopped by `signum` during 1-based `epoch`: the epoch that really
    is in RUN/last.pt (read from the file) and how to resume, or that nothing can be resumed."""
    last = Path(run_dir) / "last.pt"
    saved = checkpoint_epoch(last)
    during = f" during epoch {epoch}" if epoch is not None else ""
    head = f"Interrupted{during} by {SIGNAL_NAMES.get(signum, signal.Signals(signum).name)}"
    if saved is None:
        return f"{head}: no epoch had finished; nothing to resume (the same command starts the run afresh)"
    return (f"{head}: the checkpoint after epoch {saved} is {last}; resume with: "
            f"python -m cifarkit train --resume {last}")
