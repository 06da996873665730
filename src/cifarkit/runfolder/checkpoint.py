"""Checkpoints: written atomically, read with ``weights_only=True``, validated with one-line errors.

A checkpoint is a dict of tensors and plain values (never pickled code), tagged with FORMAT so a
stray ``.pt`` file is recognised as foreign instead of failing somewhere deep in
``load_state_dict``. It also holds the RNG states a resumed run continues from (`rng_state` /
`set_rng_state`).
"""

from __future__ import annotations

import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write, remove_stale_temps
from ..base import CifarkitError, saved_precision
from ..config import TrainConfig
from ..hardware import channels_last_for
from ..models import build_model
from .files import rebase_paths

FORMAT = "cifarkit-checkpoint"
VERSION = 1


class CheckpointError(CifarkitError):
    """A checkpoint file is missing, truncated, foreign or does not fit the network."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save `state` (model, optimizer, scheduler, epoch, history, rng, config...) atomically."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))


def rng_state() -> dict:
    """The torch, Python and (when present) CUDA random states, for a checkpoint."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back the random states `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read_error(path: Path, e: Exception) -> CheckpointError:
    """One line for a checkpoint torch.load could not read (its own messages run to several
    sentences)."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in text:  # weights_only refused an import
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return CheckpointError(
            f"cannot read checkpoint {path}: it contains pickled code{what}, refused "
            "(cifarkit reads checkpoints with weights_only=True)"
        )
    if isinstance(e, PermissionError):
        return CheckpointError(f"cannot read checkpoint {path}: permission denied")
    return CheckpointError(f"cannot read checkpoint {path}: not a torch file, or truncated")


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """Load and validate a checkpoint onto the CPU; CheckpointError with one line on any problem.

    mmap=True maps the tensors instead of reading them (cheap when only the epoch or config is
    wanted).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # a plain pickle draws a protocol warning: a second stderr line
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, random bytes, pickled code refused by weights_only, ...
        raise _read_error(path, e) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cifarkit checkpoint (no '{FORMAT}' tag)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ckpt.get('version')}; this cifarkit reads {VERSION}"
        )
    for key in ("config", "model", "epoch"):
        if key not in ckpt:
            raise CheckpointError(f"{path} is incomplete: no '{key}' entry")
    return ckpt


def reported_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a run evaluated and reported: the EMA copy when the run kept one, else the
    model's."""
    return ckpt["ema"]["module"] if ckpt.get("ema") else ckpt["model"]


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Write a slim copy of checkpoint `src` to `dst` for sharing: config, the reported weights,
    epoch and history; no optimizer, scheduler or RNG state (so about the size of the weights, and
    it can be evaluated but not resumed). Creates `dst`'s folder if needed. Returns the slim
    dict."""
    ckpt = load_checkpoint(src)
    dst = Path(dst)
    if dst.is_dir():
        raise CheckpointError(f"{dst} is a folder; give the path of the .pt file to write")
    slim = {
        "config": ckpt["config"],
        "network": ckpt.get("network"),
        "choices": ckpt.get("choices"),
        "model": reported_weights(ckpt),
        "epoch": ckpt["epoch"],
        "history": ckpt.get("history", []),
        "exported_from": str(src),
        "resumable": False,
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dst)  # what an export killed mid-write left beside `dst`
    save_checkpoint(dst, slim)
    return slim


def recorded_precision(ckpt: dict[str, Any]) -> str | None:
    """The precision the run trained in, from its runtime record ("bf16", "fp16", "fp32"), or None
    for a checkpoint an older cifarkit wrote without one."""
    name = (ckpt.get("choices") or {}).get("precision")
    return saved_precision(name) if name is not None else None


def config_from_checkpoint(
    ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint"
) -> TrainConfig:
    try:
        return TrainConfig.from_dict(rebase_paths(ckpt["config"], Path(path).parent))
    except CifarkitError as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from None


def load_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    path: str | os.PathLike = "checkpoint",
    name: str = "",
) -> None:
    """`model.load_state_dict(state)` with a one-line error when the weights belong to another
    network."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"weights in {path} do not fit network {name or type(model).__name__!r}: {len(missing)}"
            f" missing, {len(unexpected)} unexpected, {len(shapes)} of another shape (e.g."
            f" {(missing + unexpected + shapes)[0]}); was it saved from another network?"
        )
    model.load_state_dict(state)


def model_from_checkpoint(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    model: nn.Module | None = None,
    ckpt: dict | None = None,
):
    """(model with the weights the run evaluated, its config, the raw checkpoint).

    The network is rebuilt from the config's model (registry name or import path), or `model` is
    used when given (a network the run trained as an object). When the run used weight EMA, the EMA
    weights are the ones that were reported, so those are loaded. `ckpt`: the checkpoint at `path`
    when the caller has loaded it already (it is not read again).
    """
    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt, path)
    try:
        model = build_model(model if model is not None else cfg.model, cfg.dropout)
    except CifarkitError as e:
        raise CheckpointError(f"{path}: {e}") from None
    load_weights(model, reported_weights(ckpt), path, cfg.model)
    device = torch.device(device)
    model = model.to(device)
    # the layout the run trained in: the network runs in it
    nhwc = (ckpt.get("choices") or {}).get("channels_last")
    if nhwc is None:  # a run an older cifarkit wrote: evaluated as that cifarkit evaluated it
        nhwc = channels_last_for(cfg, device)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), cfg, ckpt
