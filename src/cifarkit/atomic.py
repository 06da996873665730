"""Writing a file atomically: a temp file in the same folder, fsync, rename over the file. A crash
at any moment (SIGKILL included) leaves the old file or the complete new one; a failed write (full
disk, read-only mount, no permission) is one line naming the file. Run files, the data cache and the
layout cache are all written here. No torch.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .base import CifarkitError


class WriteError(CifarkitError):
    """A run file could not be written (disk full, read-only file system, no permission...).

    The message is one line naming the file; `errno` is the OS error number when one is known.
    The previous version of the file is intact: writes go to a temp file that is renamed only when
    complete.
    """

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


_UMASK = os.umask(0)  # read the process umask (the only way is to set it) ...
os.umask(_UMASK)  # ... and put it back at once

# torch.save reports a failed write as RuntimeError("[enforce fail at inline_container.cc:...]
# unexpected pos ...") or "PytorchStreamWriter failed writing file ...": the OSError (and its errno)
# is lost on the way.
_TORCH_WRITE_FAILURE = re.compile(
    r"inline_container|PytorchStreamWriter|unexpected pos|file write failed"
)


class _Recorder:
    """The temp file as `write` sees it: remembers the first OSError its write() raised, so a
    failure that torch.save turns into a RuntimeError can still be reported by its errno (ENOSPC,
    EDQUOT, EIO...).
    """

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str):  # flush, tell, fileno...: the real file's
        return getattr(self._f, name)


def write_error(path: str | os.PathLike, e: OSError) -> WriteError:
    """The one-line WriteError for OSError `e` raised while (atomically) writing `path`."""
    path = Path(path)
    if path.exists():
        kept = (
            "the previous checkpoint is intact"
            if path.suffix == ".pt"
            else "the previous version is intact"
        )
    else:
        kept = "it was not created"
    code = e.errno
    if code == errno.ENOSPC:
        msg = f"no space left on device while writing {path}; {kept}"
    elif code == getattr(errno, "EDQUOT", -1):
        msg = f"disk quota exceeded while writing {path}; {kept}"
    elif code == errno.EROFS:
        msg = f"{path.parent} is on a read-only file system: cannot write {path.name}"
    elif code in (errno.EACCES, errno.EPERM):
        msg = f"permission denied writing {path}; {kept}"
    else:
        msg = f"cannot write {path}: {e.strerror or e}; {kept}"
    return WriteError(msg, code)


def _os_error_behind(e: BaseException) -> OSError | None:
    """The OSError an exception was raised while handling (torch keeps it as __context__), if
    any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def temp_stem(name: str, limit: int = 200) -> str:
    """`name`, cut to at most `limit` bytes, for a temp file's name beside it: mkstemp adds 14 bytes
    (".", ".", 8 random characters, ".tmp"), and a file name may hold 255 bytes at most."""
    raw = os.fsencode(name)
    return (
        name
        if len(raw) <= limit
        else os.fsdecode(raw[:limit]).encode("utf-8", "ignore").decode() or "file"
    )


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Remove the temp files an earlier write of `path` left when its process was killed mid-write
    (SIGKILL: `atomic_write`'s clean-up never ran). For files written outside a locked run folder
    (an export); a run folder's are removed under its lock (`runfolder.state.remove_temp_files`)."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(temp_stem(path.name))}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass  # gone already, or not ours to remove: the write below is unaffected


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """Call write(file_object) on a temp file in the same folder, fsync it, then rename over `path`.

    A crash at any moment (SIGKILL included) leaves either the old file or the complete new one.
    Only a regular file (or a new one) is written: a folder or a device at `path` is refused.
    Any OS failure (full disk, read-only, permissions) raises WriteError with one line; the temp
    file is always removed and the old file left as it was.
    """
    path = Path(path)
    if (
        path.exists() and not path.is_file()
    ):  # a folder, a device (/dev/null), a FIFO: never replaced
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise WriteError(f"{path} is {kind}: give the path of a file to write")
    tmp: str | None = None
    recorder: _Recorder | None = None
    try:
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{temp_stem(path.name)}.", suffix=".tmp"
        )
        with os.fdopen(fd, "wb") as f:
            recorder = _Recorder(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise write_error(path, e) from None
    except RuntimeError as e:
        cause = (recorder and recorder.error) or _os_error_behind(e)
        if cause is None and not _TORCH_WRITE_FAILURE.search(str(e)):
            raise  # a bug, not the file system
        # torch lost the errno; a full disk is by far the usual reason (temp file still there)
        if cause is None:
            full = shutil.disk_usage(path.parent).free < 1 << 20
            cause = OSError(
                errno.ENOSPC if full else errno.EIO,
                os.strerror(errno.ENOSPC if full else errno.EIO),
            )
        raise write_error(path, cause) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # e.g. the folder vanished; nothing more to tidy


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
