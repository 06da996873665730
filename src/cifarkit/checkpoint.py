"""Checkpoints: written atomically, read with ``weights_only=True``, validated with one-line errors.

A checkpoint is a dict of tensors and plain values (never pickled code), tagged with FORMAT so a stray
``.pt`` file is recognised as foreign instead of failing somewhere deep in ``load_state_dict``.
Every run file (checkpoints, history, config, results) is written through `atomic_write`, so a failed
write (full disk, read-only mount, no permission) is one line naming the file, and the previous version
of that file stays intact.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .config import CifarkitError, TrainConfig
from .hardware import channels_last_for
from .models import build_model

FORMAT = "cifarkit-checkpoint"
VERSION = 1


class CheckpointError(CifarkitError):
    """A checkpoint file is missing, truncated, foreign or does not fit the network."""


class WriteError(CifarkitError):
    """A run file could not be written (disk full, read-only file system, no permission...).

    The message is one line naming the file; `errno` is the OS error number when one is known.
    The previous version of the file is intact: writes go to a temp file that is renamed only when complete.
    """

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


_UMASK = os.umask(0)  # read the process umask (the only way is to set it) ...
os.umask(_UMASK)      # ... and put it back at once

# torch.save reports a failed write as RuntimeError("[enforce fail at inline_container.cc:...] unexpected pos
# ...") or "PytorchStreamWriter failed writing file ...": the OSError (and its errno) is lost on the way.
_TORCH_WRITE_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|unexpected pos|file write failed")


class _Recorder:
    """The temp file as `write` sees it: remembers the first OSError its write() raised, so a failure that
    torch.save turns into a RuntimeError can still be reported by its errno (ENOSPC, EDQUOT, EIO...)."""

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
        kept = "the previous checkpoint is intact" if path.suffix == ".pt" else "the previous version is intact"
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
    """The OSError an exception was raised while handling (torch keeps it as __context__), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """Call write(file_object) on a temp file in the same folder, fsync it, then rename over `path`.

    A crash at any moment (SIGKILL included) leaves either the old file or the complete new one.
    Any OS failure (full disk, read-only, permissions) raises WriteError with one line; the temp file is
    always removed and the old file left as it was.
    """
    path = Path(path)
    tmp: str | None = None
    recorder: _Recorder | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
        if cause is None:  # torch lost the errno; a full disk is by far the usual reason (temp file still there)
            full = shutil.disk_usage(path.parent).free < 1 << 20
            cause = OSError(errno.ENOSPC if full else errno.EIO, os.strerror(errno.ENOSPC if full else errno.EIO))
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


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save `state` (model, optimizer, scheduler, epoch, history, rng, config...) atomically."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))


def _read_error(path: Path, e: Exception) -> CheckpointError:
    """One line for a checkpoint torch.load could not read (its own messages run to several sentences)."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in text:  # weights_only refused an import
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return CheckpointError(f"cannot read checkpoint {path}: it contains pickled code{what}, refused "
                               f"(cifarkit reads checkpoints with weights_only=True)")
    if isinstance(e, PermissionError):
        return CheckpointError(f"cannot read checkpoint {path}: permission denied")
    return CheckpointError(f"cannot read checkpoint {path}: not a torch file, or truncated")


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """Load and validate a checkpoint onto the CPU; CheckpointError with one line on any problem.

    mmap=True maps the tensors instead of reading them (cheap when only the epoch or config is wanted).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # a plain pickle draws a protocol warning: a second stderr line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, random bytes, pickled code refused by weights_only, ...
        raise _read_error(path, e) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cifarkit checkpoint (no '{FORMAT}' tag)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt.get('version')}; this cifarkit reads {VERSION}")
    for key in ("config", "model", "epoch"):
        if key not in ckpt:
            raise CheckpointError(f"{path} is incomplete: no '{key}' entry")
    return ckpt


def reported_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a run evaluated and reported: the EMA copy when the run kept one, else the model's."""
    return ckpt["ema"]["module"] if ckpt.get("ema") else ckpt["model"]


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Write a slim copy of checkpoint `src` to `dst` for sharing: config, the reported weights, epoch and
    history; no optimizer, scheduler or RNG state (so about the size of the weights, and it can be
    evaluated but not resumed). Creates `dst`'s folder if needed. Returns the slim dict."""
    ckpt = load_checkpoint(src)
    dst = Path(dst)
    if dst.is_dir():
        raise CheckpointError(f"{dst} is a folder; give the path of the .pt file to write")
    slim = {"config": ckpt["config"], "model": reported_weights(ckpt), "epoch": ckpt["epoch"],
            "history": ckpt.get("history", []), "exported_from": str(src), "resumable": False}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, slim)
    return slim


def config_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> TrainConfig:
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except CifarkitError as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike = "checkpoint",
                 name: str = "") -> None:
    """`model.load_state_dict(state)` with a one-line error when the weights belong to another network."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"weights in {path} do not fit network {name or type(model).__name__!r}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} of another shape (e.g. "
            f"{(missing + unexpected + shapes)[0]}); was it saved from another network?")
    model.load_state_dict(state)


def model_from_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu", model: nn.Module | None = None):
    """(model with the weights the run evaluated, its config, the raw checkpoint).

    The network is rebuilt from the config's model (registry name or import path), or `model` is used when
    given (a network the run trained as an object). When the run used weight EMA, the EMA weights are the
    ones that were reported, so those are loaded.
    """
    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt, path)
    try:
        model = build_model(model if model is not None else cfg.model, cfg.dropout)
    except CifarkitError as e:
        raise CheckpointError(f"{path}: {e}") from None
    load_weights(model, reported_weights(ckpt), path, cfg.model_name)
    model = model.to(device)
    if channels_last_for(cfg, torch.device(device)):
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), cfg, ckpt
