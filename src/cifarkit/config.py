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
    portable_path,
)
from .recipes import RECIPES


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the recommended recipe for the seed
    network."""

    # The comment right above each field is its --help text (cli.field_help), whole sentences.

    # --- what to train ---
    # The network: "seed" (the Assignment 7 network), "compact" (a faster, larger one), or your own
    # class as an import path, "my_net.py:Net" or "my_net.py:Net(width=32)". In Python, a network
    # object goes beside the config instead: fit(cfg, model=net).
    model: str = "seed"
    # Dropout rate of the built-in networks (the original assignment used 0.1; 0 trains better).
    dropout: float = 0.0

    # --- data ---
    # Where CIFAR-10 is: a cifar-10-batches-py folder, an ImageFolder tree, or a .tar / .tar.gz /
    # .zip of one. Unset: downloaded by torchvision into data_root.
    data: str | None = None
    # Where torchvision downloads CIFAR-10 when data is unset.
    data_root: str = "./data"
    # Train on a class-balanced, seeded subset of this many images (quick runs); unset: all 50,000.
    limit_train: int | None = None
    # Test on a class-balanced, seeded subset of this many images (quick runs); unset: all 10,000.
    limit_test: int | None = None
    # Hold out this many training images as a validation set to tune on; 0: test on the test set.
    val_split: int = 0
    # Random crop after padding each side by this many pixels (the original assignment's 4).
    crop_padding: int = 4
    # How the crop pads: "reflect" (mirror the border; +0.5% validation accuracy) or "zeros".
    pad_mode: str = "reflect"
    # Horizontal flips: "alternate" mirrors a fixed random half of the images in even epochs and
    # the other half in odd ones, so each image is seen both ways every two epochs (+0.1-0.3%);
    # "random" flips each image with probability 1/2 each epoch; "none" never flips.
    flip: str = "alternate"
    # Side in pixels of a random square painted with the mean colour (cutout); 0: off.
    cutout: int = 0
    # Extra torchvision.transforms.v2 augmentations, e.g. "RandomRotation(15)" or
    # "ColorJitter(brightness=0.2)", applied to each image (its own draw) after crop and flip.
    transforms: list = field(default_factory=list)

    # --- optimisation ---
    # Passes over the training set (the original assignment ran 20).
    epochs: int = 20
    # Images per training step (the original used 128; 256 at lr 0.4: +0.3% on validation).
    batch_size: int = 256
    # The optimiser: "sgd", "adam" or "adamw" (adam and adamw want a peak lr near 1e-3).
    optimizer: str = "sgd"
    # Peak learning rate (for the "constant" and "step" schedules: the starting one).
    lr: float = 0.4
    # SGD momentum (for adam and adamw: beta1).
    momentum: float = 0.9
    # Nesterov momentum, SGD only: a small gain that costs nothing.
    nesterov: bool = True
    # L2 weight decay on conv and linear weights (BatchNorm weights and biases are exempt).
    weight_decay: float = 1e-3
    # Learning-rate schedule: "onecycle" (warm up, then anneal), "linear" (warm up, then straight
    # down), "constant" or "step" (multiply by gamma at given epochs). Every schedule advances once
    # per training step.
    schedule: str = "onecycle"
    # Fraction of all steps spent warming up ("onecycle" and "linear").
    warmup: float = 0.2
    # "linear" schedule: the learning rate at step 0 (where warm-up starts), a fraction of the peak.
    lr_start: float = 0.0
    # "linear" schedule: the learning rate at the last step, as a fraction of the peak.
    lr_end: float = 0.0
    # "step" schedule: multiply the learning rate by gamma every this many epochs (0: milestones).
    step_size: int = 0
    # "step" schedule: multiply the learning rate by gamma at these epochs; on the command line
    # --milestones 10 15.
    milestones: list = field(default_factory=list)
    # "step" schedule: the factor applied at each step.
    gamma: float = 0.1
    # Learning-rate multiplier for BatchNorm parameters (airbench uses 64).
    bias_lr_scale: float = 1.0
    # Label smoothing of the cross-entropy loss (airbench's 0.2).
    label_smoothing: float = 0.2
    # Per-step decay of a moving average of the weights that is evaluated instead (0.999); 0: off.
    ema: float = 0.0
    # airbench's lookahead: a slow average of the weights copied back into them every 5 steps.
    lookahead: bool = True
    # Test-time augmentation of the separate final test: "flip-translate" (6 views per image),
    # "flip" (2 views) or "none".
    tta: str = "flip-translate"

    # --- runtime: how the run computes, decided once (runtime.decide) ---
    # "auto": a CUDA GPU, else Apple MPS, else the CPU; or a torch device such as "cpu", "cuda:1".
    device: str = "auto"
    # "auto", "bf16", "fp16" or "fp32". "auto" picks bf16 on GPUs with compute capability 8.0 or
    # more (A100, L4, H100) and on CPUs with native bf16, fp16 with a gradient scaler on a T4 or
    # V100, else fp32; and fp32 when your network fails or is not finite in the first choice.
    precision: str = "auto"
    # Memory layout "auto", "yes" (channels_last, NHWC) or "no" (NCHW). "auto": on a CPU the
    # faster of the two, measured with your network; on a GPU NHWC under bf16 / fp16; in each
    # case only a layout your network runs in.
    channels_last: str = "auto"
    # Deterministic GPU algorithms (cuDNN's, benchmark off), so the same seed gives the same
    # numbers and a resumed run those of an unstopped one. A CPU is deterministic either way.
    deterministic: bool = True
    # Compile the network with torch.compile (benchmarks/README.md: measure first).
    compile: bool = False
    # On CUDA: replay each training step as a recorded CUDA graph (fewer kernel launches).
    cuda_graphs: bool = False
    # On a GPU, training steps between host reads of the loss (the NaN check, the progress bar).
    check_every: int = 50
    # Images per evaluation step (no gradients are kept, so it can be large).
    eval_batch_size: int = 1000
    # Seeds the network's initial weights, the data order, the augmentation and dropout.
    seed: int = 0
    # The run folder: config, history, checkpoints and results are written there.
    out: str = "runs/default"
    # A progress bar per epoch and a test line like the original assignment's.
    progress: bool = True
    # Set by fit: image counts and a hash of the decoded images; a resumed run checks it.
    data_fingerprint: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for the first invalid field."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        # the type first: "5" or "False" is no number or bool (model: its own message, below)
        for f in (f for f in dataclasses.fields(self) if f.name != "model"):
            v, (kinds, words) = getattr(self, f.name), _TYPES[str(f.type)]
            need(
                any(
                    isinstance(v, k) and not (k is not bool and isinstance(v, bool)) for k in kinds
                ),
                f"{f.name} must be {words}, got {type(v).__name__} {v!r}",
            )

        for name in ("data", "data_root", "out"):  # typed paths: relative to here where they can be
            setattr(self, name, getattr(self, name) and portable_path(getattr(self, name)))
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
        # inf / nan / non-numbers would pass the range checks below or diverge
        for f in dataclasses.fields(self):
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
        self.model = normalize_spec(self.model)  # its file: relative to here where it can be
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
        # a field the saved config lacks keeps the value it was trained with
        d = {**LEGACY_FIELDS, **d}
        # a value saved in an older form: what it meant then
        for name, meaning in LEGACY_VALUES.items():
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


# What each annotation admits (a bool is no int here), and how a message names it.
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "bool": ((bool,), "True or False"),
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "str": ((str,), "a string"),
    "str | None": ((str, type(None)), "a string or None"),
    "int | None": ((int, type(None)), "a whole number or None"),
    "list": ((list, tuple), "a list"),
}

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
    "deterministic",
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
    deterministic=False,  # no run before this option asked for deterministic GPU algorithms
)
# Values a saved config may hold in an older form (both options were bools before their modes
# existed): read back as what they meant then. Only `from_dict` (saved configs) translates them.
LEGACY_VALUES: dict[str, dict[bool, str]] = {
    "channels_last": {True: "yes", False: "no"},
    "flip": {True: "random", False: "none"},
}
