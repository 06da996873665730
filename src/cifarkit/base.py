"""The ground floor: constants, the error base classes and the small parsers that every other module
may import. It imports only the standard library (no torch), so the command line can use it before
torch loads.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

# CIFAR-10 label order 0..9 (also the alphabetical order of the ImageFolder class folders).
CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Per-channel mean / std of the original CIFAR-10 training set, RGB, for pixels scaled to [0, 1].
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
IMAGE_SHAPE: tuple[int, int, int] = (3, 32, 32)  # channels, height, width

# The values a TrainConfig's choice fields may take (the CLI offers the same lists).
# learning-rate schedules `optim.make_scheduler` knows
SCHEDULES = ("onecycle", "linear", "constant", "step")
OPTIMIZERS = ("sgd", "adam", "adamw")  # `optim.make_optimizer`
# autocast dtypes; "auto" picks what the device does natively
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def saved_precision(name: str) -> str:
    """A precision name as a checkpoint or results.json saved it, in today's spelling (an older
    cifarkit wrote "bfloat16" / "float16")."""
    return {"bfloat16": "bf16", "float16": "fp16"}.get(name, name)


# memory layout; "auto": measured on a CPU (hardware.py)
CHANNELS_LAST_MODES = ("auto", "yes", "no")
TTA_MODES = ("none", "flip", "flip-translate")  # test-time augmentation of the separate final test
# forward passes per image that each mode averages
TTA_VIEWS = {"none": 1, "flip": 2, "flip-translate": 6}
# training flips: per image, or airbench's alternating
FLIP_MODES = ("random", "alternate", "none")
PAD_MODES = ("zeros", "reflect")  # how the random crop pads the image
# the optimiser turns the LR into float32 tensors: larger values overflow
FLOAT32_MAX = 3.4028234663852886e38


class CifarkitError(Exception):
    """Base of every error cifarkit raises for bad input; its message is one line meant for a
    person."""


class ConfigError(CifarkitError, ValueError):
    """An invalid configuration value; the message names the field and the allowed values."""


def parse_call(text: str, what: str = "spec") -> tuple[str, dict[str, Any]]:
    """'Name' or 'Name(arg=literal, ...)' (dotted names allowed; positional literals become "_0",
    "_1", ... only for transforms) -> (name, kwargs). Only Python literals are accepted, so a config
    never runs code.
    """
    try:
        node = ast.parse(text.strip(), mode="eval").body
        call = node if isinstance(node, ast.Call) else None
        name = ast.unparse(call.func if call else node)
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError
        args = [ast.literal_eval(a) for a in call.args] if call else []
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords} if call else {}
        if any(k is None for k in kwargs):
            raise ValueError
    except (SyntaxError, ValueError, TypeError):
        raise ConfigError(
            f"bad {what} {text!r}: expected Name or Name(arg=value, ...) with literal values"
        ) from None
    for i, a in enumerate(args):
        kwargs[f"_{i}"] = a
    return name, kwargs


def format_call(name: str, kwargs: dict[str, Any] | None = None) -> str:
    """Inverse of `parse_call`: ('RandomRotation', {'degrees': 15}) ->
    'RandomRotation(degrees=15)'."""
    kwargs = kwargs or {}
    pos = [repr(kwargs[f"_{i}"]) for i in range(len(kwargs)) if f"_{i}" in kwargs]
    kw = [f"{k}={v!r}" for k, v in kwargs.items() if not k.startswith("_")]
    return f"{name}({', '.join(pos + kw)})" if kwargs else name


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ConfigError "NAME must be one of A, B, C, got VALUE" unless `value` is one of
    `choices`: the one wording of that refusal, wherever a choice is checked."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def plural(n: int, word: str) -> str:
    """ "1 epoch", "20 epochs", "1,024 images": a count and its noun, the one spelling of both."""
    return f"{n:,} {word}{'s' * (n != 1)}"


def first_line(e: BaseException, limit: int = 300, default: str = "") -> str:
    """The first line of an error's message (at most `limit` characters), or `default` when it has
    none: what every one-line error here quotes of another error."""
    return (str(e).strip().splitlines() or [default])[0][:limit]


def show_path(path: str | os.PathLike) -> str:
    """A path for a one-line message: as it is, or quoted (repr) when it holds a newline or other
    unprintable characters."""
    text = os.fspath(path)
    return text if text.isprintable() else repr(text)


def portable_path(path: str) -> str:
    """A path a person typed, as a config keeps, prints and saves it: relative to the working
    directory when it lies under it (so a notebook, its printed config and its run folder name
    nothing of the machine they ran on), else as typed with ~ expanded. Symlinks are not followed:
    a link stays the name it was given."""
    full = os.path.abspath(os.path.expanduser(path))
    here = os.path.abspath(os.getcwd())
    if full == here or full.startswith(here.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(full, here)).as_posix()
    return os.path.expanduser(path)


def cache_dir() -> Path:
    """The folder cifarkit caches decoded datasets and layout measurements in (created on first
    write): $CIFARKIT_CACHE, else $XDG_CACHE_HOME/cifarkit, else ~/.cache/cifarkit."""
    if os.environ.get("CIFARKIT_CACHE"):
        return Path(os.environ["CIFARKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifarkit"
