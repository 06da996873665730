"""TrainConfig's fields as command-line options (`cli.py` adds them to `train` and `lr-find`): one
option per field, its help the field's whole comment in config.py, its default as a student would
type it, its choices the values the field takes. Imports no torch (the CLI takes its run lock
first)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing

from .base import (
    CHANNELS_LAST_MODES,
    FLIP_MODES,
    OPTIMIZERS,
    PAD_MODES,
    PRECISIONS,
    SCHEDULES,
    TTA_MODES,
)
from .config import TrainConfig

CHOICES = {
    "flip": FLIP_MODES,
    "pad_mode": PAD_MODES,
    "schedule": SCHEDULES,
    "optimizer": OPTIMIZERS,
    "precision": PRECISIONS,
    "tta": TTA_MODES,
    "channels_last": CHANNELS_LAST_MODES,
}
NOT_OPTIONS = ("data_fingerprint",)  # set by fit, never by hand


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (--batch-size for batch_size), default None = "not
    given"."""
    hints = typing.get_type_hints(TrainConfig)
    helps = field_help()
    data_default = os.environ.get("CIFARKIT_DATA")  # the notebook and CI point this at a local copy
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_OPTIONS:
            continue
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw: dict = {
            "help": f"{helps.get(f.name, '')} (default: {_shown(f.name, default)})".replace(
                "%", "%%"
            ),
            "default": None,
        }
        if f.name == "data":
            kw["default"] = data_default
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif f.name == "transforms":
            kw.update(action="append", metavar="TRANSFORM")
        elif f.name == "milestones":
            kw.update(type=int, nargs="+", metavar="EPOCH")
        elif f.name in CHOICES:
            kw["choices"] = CHOICES[f.name]
        elif kind in (int, typing.Optional[int]):
            kw["type"] = int
        elif kind is float:
            kw["type"] = float
        p.add_argument(flag, **kw)


def field_help() -> dict[str, str]:
    """Each TrainConfig field's comment, the comment lines right above it in config.py, joined: the
    CLI's --help text. The comments are the one description of the defaults (a test checks every
    field has one and that each help is its whole comment); without the source (a frozen install)
    the help is just the defaults."""
    import inspect

    try:
        source = inspect.getsource(TrainConfig)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    help_, block = {}, []
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("#"):
            comment = text.lstrip("#").strip()
            # a section heading starts a new block
            block = [] if comment.startswith("---") else block + [comment]
            continue
        head = text.split(":", 1)[0]
        if head in names and ":" in text and block:
            help_[head] = " ".join(block)
        block = []
    return help_


def _shown(name: str, default) -> str:
    """A default as it would be typed on the command line: `--lookahead`, `--no-compile`, `10 15`,
    "unset"."""
    flag = "--" + name.replace("_", "-")
    if isinstance(default, bool):
        return flag if default else "--no-" + flag[2:]
    if default is None or default == []:
        return "unset"
    if isinstance(default, list):
        return " ".join(str(v) for v in default)
    return str(default)
