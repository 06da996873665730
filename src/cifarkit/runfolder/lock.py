"""The run folder's lock: one owner at a time, taken before anything heavy is imported.

This module imports nothing but the standard library and the ground floor (no torch), so `python -m
cifarkit train` takes the lock within a fraction of a second of starting: the command started first
owns the folder. The OS drops the lock when the process dies, so even a SIGKILLed run leaves no
stale lock.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..base import CifarkitError, show_path
from .files import LOCK

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None

# How a message tells the user what to do: in command-line flags, or in Python (fit's arguments).
ADVICE = {
    "cli": {
        "overwrite": "pass --overwrite",
        "out": "choose another --out",
        "resume": "resume with: python -m cifarkit train --resume {last}",
    },
    "python": {
        # once: left in, every later call (each Run all) trains from scratch again
        "overwrite": "pass overwrite=True once (then take it out, or every Run all trains again)",
        "out": "set cfg.out to another folder",
        "resume": 'resume with: fit(cfg, resume="auto") (or resume={last!r})',
    },
}


def advice(speak: str, what: str, last: str | os.PathLike = "") -> str:
    """The ADVICE line `what` for `speak` ("cli" or "python"); the path is absolute, so the line
    works pasted into any folder's shell or notebook, and quoted for a shell."""
    last = os.path.abspath(last) if str(last) else ""
    if speak == "cli":
        import shlex

        return ADVICE[speak][what].format(last=shlex.quote(last))
    return ADVICE[speak][what].format(last=last)


class RunDirError(CifarkitError):
    """The run folder cannot be used: in use by another run, holds a run, is a file, is not
    writable."""


def _folder_error(run_dir: Path, e: OSError) -> RunDirError:
    """One line for an OSError met while creating or probing `run_dir`."""
    if e.errno == errno.EROFS:
        return RunDirError(f"{run_dir} is on a read-only file system; choose another --out")
    if e.errno in (errno.EACCES, errno.EPERM):
        return RunDirError(f"permission denied: cannot write in {run_dir}; choose another --out")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        link = next(
            (p for p in (run_dir, *run_dir.parents) if p.is_symlink() and not p.exists()), None
        )
        if link is not None:
            return RunDirError(
                f"--out {show_path(run_dir)}: {show_path(link)} is a symbolic link to"
                f" {show_path(os.readlink(link))}, which does not exist; create that folder or"
                " choose another --out"
            )
        return RunDirError(
            f"--out {show_path(run_dir)} is a file, not a folder (or lies under one)"
        )
    if e.errno == errno.ENOSPC:
        return RunDirError(f"no space left on device in {run_dir}")
    return RunDirError(f"cannot write in {run_dir}: {e.strerror or e}")


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p `path`; returns the folders it created, outermost first (so they can be removed
    again)."""
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
    """Exclusive ownership of a run folder: ``with RunLock(run_dir): ...`` (or acquire() /
    release()).

    flock on ``RUN/.lock`` (which holds the owner's pid): the OS releases it when the process dies,
    however it dies. Locks belong to the open file, so two RunLock objects conflict even within one
    process. Acquiring creates the folder if needed; releasing removes the lock file, and the
    folders acquire() created if they are still empty (a run that failed during setup leaves nothing
    behind).
    """

    def __init__(self, run_dir: str | os.PathLike, speak: str = "cli"):
        # speak: word the "in use" line for "cli" or "python"
        self.run_dir, self.speak = Path(run_dir), speak
        self.path = self.run_dir / LOCK
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.run_dir} is already locked by this RunLock")
        for _ in range(20):  # retried only when the owner removes the file or folder under us
            try:
                self._created += _make_dirs(self.run_dir)
                # O_NOFOLLOW: a .lock that is a symlink is refused, never written through to its
                # target
                fd = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644
                )
            except FileNotFoundError:
                continue  # a finishing run removed its empty folder between our mkdir and open
            except IsADirectoryError:
                # a folder where the lock file belongs: no run can hold it, so an empty one goes
                try:
                    os.rmdir(self.path)
                    continue
                except OSError:
                    _remove_empty(self._created)
                    raise RunDirError(
                        f"{show_path(self.path)} is a folder, not cifarkit's lock file: remove it"
                        " (it holds files of its own), then run again"
                    ) from None
            except OSError as e:
                _remove_empty(self._created)
                if e.errno == errno.ELOOP or self.path.is_symlink():
                    raise RunDirError(
                        f"{self.path} is a symbolic link; remove it (cifarkit never writes "
                        "through a link)"
                    ) from None
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
                raise RunDirError(
                    f"{self.run_dir} is in use by another cifarkit run ({pid}); "
                    f"wait for it or {advice(self.speak, 'out')}"
                )
            if fcntl is None or _same_file(fd, self.path):
                self._fd = fd
                try:  # the pid is only for the message a second run prints
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError as e:
                    self.release()
                    raise _folder_error(self.run_dir, e) from None
                return self
            # we locked a file its owner had just removed: lock the current one instead
            os.close(fd)
        raise RunDirError(f"cannot lock {self.run_dir}: its lock file keeps changing")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            # unlink while still holding it: waiters notice the file is gone and retry
            if fcntl is not None:
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
        # a lock taken earlier (the CLI's) is carried on
        return self if self.held else self.acquire()

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
                # a file system without locks (some NFS setups): run unlocked rather than not at all
                return True
            raise
        return True
    # Windows (untested here): lock one byte past the pid, so others can still read it
    if msvcrt is not None:
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
