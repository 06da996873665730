"""Checkpoints: written atomically, read with ``weights_only=True``, validated with one-line errors.

A checkpoint is a dict of tensors and plain values (never pickled code), tagged with FORMAT so a stray
``.pt`` file is recognised as foreign instead of failing somewhere deep in ``load_state_dict``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import CifarkitError, TrainConfig
from .models import create_model

FORMAT = "cifarkit-checkpoint"
VERSION = 1


class CheckpointError(CifarkitError):
    """A checkpoint file is missing, truncated, foreign or does not fit the network."""


_UMASK = os.umask(0)  # read the process umask (the only way is to set it) ...
os.umask(_UMASK)      # ... and put it back at once


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(file_object) on a temp file in the same folder, fsync it, then rename over `path`.

    A crash at any moment (SIGKILL included) leaves either the old file or the complete new one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save `state` (model, optimizer, scheduler, epoch, history, rng, config...) atomically."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint onto the CPU; CheckpointError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled code refused by weights_only, ...
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: truncated, corrupt or not a torch file "
                              f"({reason})") from None
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


def model_from_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """(model with the weights the run evaluated, its config, the raw checkpoint).

    When the run used weight EMA, the EMA weights are the ones that were reported, so those are loaded.
    """
    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt, path)
    model = create_model(cfg.model, dropout=cfg.dropout)
    load_weights(model, reported_weights(ckpt), path, cfg.model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), cfg, ckpt
