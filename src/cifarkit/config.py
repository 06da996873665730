"""The training configuration: one dataclass of plain values, validated once when it is made.

Every default carries a one-line comment saying what it is and why. A config is printed at the start
of a run and saved as ``config.json`` next to its results, so a run folder always says how it was
made.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .base import (
    CHANNELS_LAST_MODES,
    FLIP_MODES,
    FLOAT32_MAX,
    OPTIMIZERS,
    PAD_MODES,
    PRECISIONS,
    SCHEDULES,
    TTA_MODES,
    ConfigError,
    check_choice,
    format_call,
    parse_call,
)
from .recipes import RECIPES


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the recommended recipe for the seed
    network."""

    # fmt: off  (aligned comments: each field's comment is its --help text, `field_help`)
    # --- what to train ---
    model: str = "seed"  # a name in `models.MODELS` or an import path
    # "file.py:Class(k=v)" / "pkg.mod:Class"; a network
    # object goes beside it: fit(cfg, model=net)
    dropout: float = 0.0  # dropout of the built-in networks
    # (seed used 0.1, 0 trains better)
    # --- data ---
    data: str | None = None  # None: torchvision download into
    # `data_root`; else a folder or archive
    data_root: str = "./data"  # where torchvision's CIFAR-10 is
    # downloaded when `data` is None
    limit_train: int | None = None  # class-balanced, seeded subset of
    # N training images (quick runs)
    limit_test: int | None = None  # class-balanced, seeded subset
    # of N test images (quick runs)
    val_split: int = 0  # hold out N training images as a
    # validation set (0: evaluate on test)
    crop_padding: int = 4  # random crop after padding by
    # this many pixels (the seed's 4)
    pad_mode: str = "reflect"  # crop padding, one of PAD_MODES
    # (reflect: +0.5% on val over zeros)
    flip: str = "alternate"  # horizontal flips, one of FLIP_MODES
    # (alternate: +0.1-0.3% on val)
    cutout: int = 0  # side (px) of a random square painted
    # with the mean colour; 0 = off
    transforms: list = field(default_factory=list)  # extra torchvision.transforms.v2, e.g.
    # "RandomRotation(15)": applied per image (own
    # random draw) on uint8, after crop / flip
    # --- optimisation ---
    epochs: int = 20  # passes over the training set (the seed ran 20)
    batch_size: int = 256  # images per step (seed: 128); 256 at
    # lr 0.4: +0.3% on val, fewer steps
    optimizer: str = "sgd"  # one of OPTIMIZERS (adam / adamw want a peak lr near 1e-3)
    lr: float = 0.4  # peak learning rate (schedule
    # "constant" / "step": the starting one)
    momentum: float = 0.9  # SGD momentum (adam / adamw: beta1)
    nesterov: bool = True  # Nesterov momentum (SGD only): a
    # small, free gain over plain momentum
    weight_decay: float = 1e-3  # L2 on conv / linear weights (BatchNorm
    # and biases exempt); best on val
    schedule: str = "onecycle"  # one of SCHEDULES; every schedule
    # advances once per batch (optimizer step)
    warmup: float = 0.2  # fraction of all steps spent warming up (onecycle / linear)
    lr_start: float = 0.0  # "linear": LR at step 0 as a fraction
    # of the peak (warmup from here)
    lr_end: float = 0.0  # "linear": LR at the last step as a fraction of the peak
    step_size: int = 0  # "step": multiply the LR by `gamma`
    # every N EPOCHS (0: use milestones)
    milestones: list = field(default_factory=list)  # "step": ...or at these EPOCHS, e.g. [10, 15]
    gamma: float = 0.1  # "step": the LR factor at each step
    bias_lr_scale: float = 1.0  # LR multiplier for BatchNorm parameters (airbench: 64)
    label_smoothing: float = 0.2  # cross-entropy label smoothing (airbench's 0.2)
    ema: float = 0.0  # weight-EMA decay per step (e.g. 0.999),
    # evaluated separately; 0 disables
    lookahead: bool = True  # airbench's lookahead: an EMA copied
    # back into the weights every 5 steps
    tta: str = "flip-translate"  # test-time augmentation of the
    # separate final test, one of TTA_MODES
    # --- runtime ---
    device: str = "auto"  # "auto": cuda, then mps, then cpu; or a torch device string
    precision: str = "auto"  # one of PRECISIONS; "auto": bf16 on CC >=
    # 8.0 GPUs and bf16 CPUs, fp16 + gradient
    # scaler on CC 7.x (T4, V100), else fp32
    channels_last: str = "auto"  # NHWC memory layout, one of CHANNELS_LAST_MODES;
    # "auto": on a CPU the faster layout measured with
    # this network, on CUDA NHWC with bf16 / fp16
    compile: bool = False  # torch.compile the model (see
    # benchmarks/README.md: measure first)
    cuda_graphs: bool = False  # on CUDA: replay the train step as CUDA graphs
    # (not yet measured on a GPU: eager is the default
    # until benchmarks/gpu_check.sh shows a gain)
    check_every: int = 50  # on GPUs, steps between host reads of
    # the loss (NaN check, progress bar)
    eval_batch_size: int = 1000  # images per evaluation step (no
    # autograd, so it can be large)
    seed: int = 0  # seeds model init, data order, augmentation and dropout
    out: str = "runs/default"  # run folder: config, history, checkpoints
    progress: bool = True  # tqdm bar per epoch and the seed-style test line
    data_fingerprint: str = ""  # set by `fit`: image counts + hash of
    # the decoded arrays; resume checks it
    # fmt: on

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for the first invalid field."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(
            isinstance(self.epochs, int) and self.epochs >= 1,
            f"epochs must be an integer >= 1, got {self.epochs!r}",
        )
        need(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            f"batch_size must be >= 1, got {self.batch_size!r}",
        )
        need(
            isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1,
            f"eval_batch_size must be >= 1, got {self.eval_batch_size!r}",
        )
        for f in dataclasses.fields(
            self
        ):  # inf / nan / non-numbers would pass the range checks below or diverge
            v = getattr(self, f.name)
            if f.type in ("float", float) and not (
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ):
                raise ConfigError(f"{f.name} must be a finite number, got {v!r}")
        need(
            0 < self.lr <= FLOAT32_MAX,
            f"lr must be in (0, 3.4e38] (float32's range), got {self.lr!r}",
        )
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        need(
            0 <= self.label_smoothing < 1,
            f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}",
        )
        need(0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema!r}")
        need(0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup!r}")
        need(
            0 <= self.cutout <= 32, f"cutout must be a square side in [0, 32], got {self.cutout!r}"
        )
        need(self.crop_padding >= 0, f"crop_padding must be >= 0, got {self.crop_padding!r}")
        need(self.bias_lr_scale > 0, f"bias_lr_scale must be > 0, got {self.bias_lr_scale!r}")
        need(
            0 <= self.lr_start <= 1 and 0 <= self.lr_end <= 1,
            f"lr_start and lr_end are fractions of the peak in [0, 1], got {self.lr_start!r},"
            f" {self.lr_end!r}",
        )
        need(not (self.ema > 0 and self.lookahead), "use either ema or lookahead, not both")
        check_choice("flip", self.flip, FLIP_MODES)
        check_choice("pad_mode", self.pad_mode, PAD_MODES)
        need(self.val_split >= 0, f"val_split must be >= 0, got {self.val_split!r}")
        for name in ("limit_train", "limit_test"):
            v = getattr(self, name)
            need(
                v is None or (isinstance(v, int) and v >= 10),
                f"{name} must be >= 10 (one image per class), got {v!r}",
            )
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        need(
            isinstance(self.step_size, int) and self.step_size >= 0,
            f"step_size must be >= 0 epochs, got {self.step_size!r}",
        )
        self.milestones = list(self.milestones)
        need(
            all(isinstance(m, int) and 1 <= m for m in self.milestones)
            and self.milestones == sorted(set(self.milestones)),
            f"milestones must be increasing epochs >= 1, got {self.milestones!r}",
        )
        need(
            self.schedule != "step" or bool(self.step_size) != bool(self.milestones),
            "schedule 'step' needs exactly one of step_size (epochs) or milestones",
        )
        need(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma!r}")
        need(
            isinstance(self.check_every, int) and self.check_every >= 1,
            f"check_every must be >= 1, got {self.check_every!r}",
        )
        self.transforms = [t if isinstance(t, str) else format_call(*t) for t in self.transforms]
        for t in self.transforms:
            parse_call(t, "transform")
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("tta", self.tta, TTA_MODES)
        check_choice("channels_last", self.channels_last, CHANNELS_LAST_MODES)
        # Imported here, not at the top: the CLI builds configs and takes its run lock before torch
        # loads.
        from .models import check_model_spec, normalize_spec

        need(
            isinstance(self.model, str),
            "model must be a registry name or an import path (a string), got"
            f" {type(self.model).__name__}: pass a network object beside the config, fit(cfg,"
            " model=net)",
        )
        self.model = normalize_spec(
            self.model
        )  # a file path made absolute: it works from any folder
        check_model_spec(self.model)

    # --- (de)serialisation ---
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, field by field."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**d, "transforms": list(self.transforms), "milestones": list(self.milestones)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a saved config.json / checkpoint config; unknown keys are an error. A config
        saved before an option existed gets that option's LEGACY_FIELDS value (how it was trained),
        otherwise defaults.
        """
        cls._check_names(d)
        d = {
            **LEGACY_FIELDS,
            **d,
        }  # a field the saved config lacks keeps the value it was trained with
        for (
            name,
            meaning,
        ) in LEGACY_VALUES.items():  # a value saved in an older form: what it meant then
            if isinstance(d.get(name), bool):
                d = {**d, name: meaning[d[name]]}
        return cls(**d)

    @classmethod
    def from_recipe(cls, recipe: str, **overrides: Any) -> "TrainConfig":
        """A preset from RECIPES with `overrides` on top (None values are ignored)."""
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
        d = {**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}}
        cls._check_names(d)
        return cls(**d)  # not from_dict: a recipe takes today's defaults, never the legacy ones

    @classmethod
    def _check_names(cls, d: dict[str, Any]) -> None:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")

    def unused_fields(self) -> set[str]:
        """Fields this config's schedule / optimiser / averaging never reads (e.g. lr_start with
        onecycle)."""
        unused = {"data_fingerprint"} if not self.data_fingerprint else set()
        if self.schedule != "linear":
            unused |= {"lr_start", "lr_end"}
        if self.schedule not in ("onecycle", "linear"):
            unused.add("warmup")
        if self.schedule != "step":
            unused |= {"step_size", "milestones", "gamma"}
        if self.optimizer != "sgd":
            unused.add("nesterov")
        if not self.ema:
            unused.add("ema")
        if self.data is not None:
            unused.add("data_root")
        return unused

    def __str__(self) -> str:
        """Every field the run uses, one per line (fields this schedule / optimiser never reads are
        left out)."""
        width = max(len(f.name) for f in dataclasses.fields(self))
        skip = self.unused_fields()
        lines = [f"  {k:<{width}} = {v!r}" for k, v in self.to_dict().items() if k not in skip]
        return "TrainConfig(\n" + "\n".join(lines) + "\n)"


# Fields a resumed run may take from the new call: how it runs, not what it computes.
RUNTIME_FIELDS = (
    "device",
    "progress",
    "compile",
    "cuda_graphs",
    "check_every",
    "eval_batch_size",
    "data",
    "data_root",
    "precision",
    "channels_last",
)
# Fields that name where a run lives or what it found, never how it trains.
BOOKKEEPING_FIELDS = ("out", "data_fingerprint")


def explicit_fields(cfg: TrainConfig, given: set[str] | None = None) -> set[str]:
    """The fields the user set on purpose: `given` when the caller knows (the CLI: the options on
    its command line and the recipe's fields), else every field whose value differs from
    TrainConfig's default.
    """
    if given is not None:
        return set(given)
    defaults = TrainConfig()
    return {
        f.name
        for f in dataclasses.fields(TrainConfig)
        if getattr(cfg, f.name) != getattr(defaults, f.name)
    }


def config_differences(saved: TrainConfig, requested: TrainConfig) -> list[str]:
    """The fields (as 'name=requested (run: saved)') in which `requested` would train differently
    from the run `saved` came from: every field but RUNTIME_FIELDS and BOOKKEEPING_FIELDS."""
    ignore = set(RUNTIME_FIELDS) | set(BOOKKEEPING_FIELDS)
    a, b = requested.to_dict(), saved.to_dict()
    return [f"{k}={a[k]!r} (run: {b[k]!r})" for k in a if k not in ignore and a[k] != b.get(k)]


# Fields added after the first saved runs, with the value that reproduces how those runs were
# trained (so an old config.json or checkpoint still evaluates and resumes as it ran, whatever
# today's defaults).
LEGACY_FIELDS: dict[str, Any] = dict(
    pad_mode="zeros",
    cutout=0,
    lr_start=0.0,
    lr_end=0.0,
    bias_lr_scale=1.0,
    lookahead=False,
    cuda_graphs=False,
)
# Values a saved config may hold in an older form (both options were bools before their modes
# existed): read back as what they meant then. Only `from_dict` (saved configs) translates them.
LEGACY_VALUES: dict[str, dict[bool, str]] = {
    "channels_last": {True: "yes", False: "no"},
    "flip": {True: "random", False: "none"},
}


def field_help() -> dict[str, str]:
    """Each TrainConfig field's comment in this file (continuation lines joined): the CLI's --help
    text. The comments are the one description of the defaults (a test checks every field has one);
    without the source (a frozen install) the help is just the defaults."""
    import inspect

    help_, name = {}, None
    try:
        source = inspect.getsource(TrainConfig)
    except (OSError, TypeError):
        return {}
    for line in source.splitlines():
        code, _, comment = line.partition("#")
        head = code.strip().split(":", 1)[0]
        if head.isidentifier() and ":" in code and not code.strip().startswith(("def ", "class ")):
            name = head
            help_[name] = comment.strip()
        elif not code.strip() and comment and name and line.startswith(" " * 20):
            help_[name] += (
                " " + comment.strip()
            )  # an indented comment-only line continues the field above
        elif code.strip():
            name = None
    return {
        k: v for k, v in help_.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}
    }
