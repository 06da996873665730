"""Building a run: the one setup `fit`, the LR range test and a finished run's loading share. From a
config (and a network object or factory passed beside it) it makes, in this order: the device, the
seeded random state, the data (refused on resume when it is not the run's), the splits, the network
(initialised, on the device), the run's `Runtime` (precision, layout and determinism, decided with
that network: `runtime.decide`), the network in its layout, probed, then, for training, the loaders,
the optimiser, schedule, weight averager and the `TrainStep`. It prints what it chose; it writes no
files.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..base import ConfigError, check_choice, portable_path
from ..compiled import prepare_train_model
from ..config import TrainConfig
from ..data.dataset import Cifar10, DataError, fingerprint
from ..data.loader import DeviceLoader, normalize
from ..data.sources import load_cifar10
from ..data.splits import Splits, make_splits
from ..hardware import keep_freed_memory, resolve_device
from ..models import build_model, count_parameters, probe
from ..models.identity import materialize, network_identity
from ..models.registry import ObjectCopies, passed_object_notes
from ..optim import Averager, make_averager, make_optimizer, make_scheduler
from ..runtime import Runtime, decide
from .step import BatchFn, LossFn, TrainStep

# how far `build_run` goes: each stage includes those before it
STAGES = ("network", "loaders", "step")


@dataclass
class Run:
    """What `build_run` made: everything one run holds while it trains (the trainer adds its
    history)."""

    cfg: TrainConfig  # the config as run: data_fingerprint filled in
    # device, precision, layout, determinism: decided once, saved as the checkpoints' "choices"
    runtime: Runtime
    data: Cifar10
    splits: Splits
    # the network, initialised, on the device, in its memory layout
    model: nn.Module
    # the network's code (models.identity), saved in every checkpoint
    identity: dict
    # False: an object came with weights drawn before anything was seeded
    seeded_init: bool
    loader: Optional[DeviceLoader] = None  # stage "loaders": the training batches
    eval_loader: Optional[DeviceLoader] = None  # stage "loaders": validation (or test) batches
    step: Optional[TrainStep] = None  # stage "step": optimiser, schedule, averager, hooks
    averager: Optional[Averager] = None
    history: list = field(default_factory=list)  # the trainer's: one row per finished epoch
    start_epoch: int = 0  # epochs done before this process (a resumed run)
    current_epoch: int = 0  # 0-based epoch in progress (for the interrupt message)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated: the averager's (EMA) where there is one, else the
        network."""
        return self.averager.eval_model(self.model) if self.averager is not None else self.model

    @property
    def device(self) -> torch.device:
        return self.runtime.torch_device

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype the runtime chose (None: fp32)."""
        return self.runtime.amp_dtype

    @property
    def nhwc(self) -> bool:
        """The memory layout the runtime chose (True: channels_last); a resumed run keeps it."""
        return self.runtime.channels_last


def build_run(
    cfg: TrainConfig,
    data: Cifar10 | None = None,
    *,
    model: nn.Module | object | None = None,
    ckpt: dict | None = None,
    batch_fn: BatchFn | None = None,
    loss_fn: LossFn | None = None,
    upto: str = "step",
    verbose: bool = True,
) -> Run:
    """The run of `cfg`, built up to stage `upto` ("network", "loaders" or "step"; see `STAGES`).

    `model`: a network object (used as it is) or a zero-argument factory (called after seeding, so
    its initial weights follow cfg.seed) instead of `cfg.model`. `ckpt`: the checkpoint a run
    resumes or was loaded from: its data fingerprint is checked, its "auto" choices (precision,
    layout) are kept and a network that initialises itself from data is not (its weights come from
    the checkpoint). Seeds torch and Python's `random` with cfg.seed. `verbose` prints the config
    and every choice with its reason.
    """
    check_choice("upto", upto, STAGES)
    if isinstance(model, ObjectCopies):  # the notebook's NETWORK = Net(): a copy, as an object
        model = model()
    device = resolve_device(cfg.device)
    memory = keep_freed_memory(device)  # before the layout probe times anything
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data, found = load_run_data(
        cfg,
        data,
        cfg.data_fingerprint if ckpt is not None else "",
        trained_on=ckpt["config"].get("data") if ckpt is not None else None,
    )
    cfg = dataclasses.replace(cfg, data_fingerprint=found)
    splits = make_splits(cfg, data)
    if len(splits.train[1]) == 0:
        raise ConfigError(
            "the training split is empty: there is nothing to train on or initialise from "
            "(check --data, --limit-train and --val-split)"
        )
    factory = model if model is not None and not isinstance(model, nn.Module) else None
    if verbose:
        print(cfg)
        if memory:
            print(f"memory: {memory}")
        print(
            f"data: {len(splits.train[1])} train / {len(splits.eval[1])} {splits.eval_name.lower()}"
            f" images from {data.source or 'torchvision'}"
        )
        for line in passed_object_notes(
            cfg.model, None if factory else model, factory, resumed=ckpt is not None
        ):
            print(line)
    if factory is not None:
        # after seeding: its initial weights follow cfg.seed
        model = build_model(factory, cfg.dropout)
    net = network_on_device(cfg, splits.train[0], device, model=model, from_data=ckpt is None)
    runtime = decide(
        device,
        cfg.precision,
        cfg.channels_last,
        cfg.deterministic,
        net,
        normalize(splits.train[0][:8].to(device)),
        kept=(ckpt or {}).get("choices"),
        batch=min(cfg.batch_size, 64),
    )
    if verbose:
        print(f"torch {torch.__version__}")
        print("\n".join(runtime.lines()))
    net = net.to(
        memory_format=torch.channels_last if runtime.channels_last else torch.contiguous_format
    )
    # refuse a network that cannot classify, before training
    probe(net, normalize(splits.train[0][:2].to(device), runtime.channels_last))
    if verbose:
        print(f"model: {cfg.model}, {count_parameters(net):,} parameters")
    run = Run(
        cfg,
        runtime,
        data,
        splits,
        net,
        network_identity(net, cfg.model),
        seeded_init=factory is not None or model is None or ckpt is not None,
    )
    if upto == "network":
        return run
    run.loader = DeviceLoader.from_config(
        *splits.train, cfg, train=True, device=device, channels_last=run.nhwc
    )
    run.eval_loader = DeviceLoader.from_config(
        *splits.eval, cfg, train=False, device=device, channels_last=run.nhwc
    )
    if upto == "loaders":
        return run
    if not any(p.requires_grad for p in net.parameters()):
        raise ConfigError(
            f"every parameter of {type(net).__name__} is frozen (requires_grad=False): there is"
            " nothing to train; unfreeze at least one layer"
        )
    optimizer = make_optimizer(net, cfg)
    run.averager = make_averager(cfg, net, cfg.epochs * len(run.loader))
    run.step = TrainStep(
        prepare_train_model(net, device=device, cuda_graphs=cfg.cuda_graphs, compile=cfg.compile),
        optimizer,
        run.amp_dtype,
        cfg.label_smoothing,
        make_scheduler(optimizer, cfg, len(run.loader)),
        run.averager,
        batch_fn,
        loss_fn,
    )
    return run


def network_on_device(
    cfg,
    train_images: torch.Tensor,
    device: torch.device,
    *,
    model: nn.Module | None = None,
    from_data: bool = True,
) -> nn.Module:
    """The network of `cfg` (or the object `model`, when one was passed beside the config) on
    `device`, its lazy modules materialised. With `from_data`, a network that initialises itself
    from data (CompactNet's whitening conv) sees the first 5,000 training images (a resumed run
    loads those weights instead). Its memory layout is the runtime's to decide (`runtime.decide`).
    """
    net = model if model is not None else build_model(cfg.model, cfg.dropout)
    # lazy modules get their parameters before anything counts, moves or measures them
    materialize(net)
    if from_data and hasattr(net, "init_from_data"):
        net.init_from_data(normalize(train_images[:5000]))
    return net.to(device)


def load_run_data(
    cfg: TrainConfig, data: Cifar10 | None, saved_fingerprint: str, trained_on: str | None = None
) -> tuple[Cifar10, str]:
    """The run's data and its fingerprint; on resume (`saved_fingerprint` given), refuse in one line
    a source that does not hold the images the run started with, naming where those were
    (`trained_on`, the saved config's data) and, when $CIFARKIT_DATA chose the new source, that
    variable."""
    where = trained_on or "torchvision's CIFAR-10"
    env = os.environ.get("CIFARKIT_DATA")
    hint = (
        f"; $CIFARKIT_DATA={env} chose it: unset it, or pass --data {where}"
        if env and cfg.data == portable_path(env)
        else f"; resume with --data {where}"
    )
    if data is None:
        try:
            data = load_cifar10(cfg.data, cfg.data_root, progress=cfg.progress)
        except DataError as e:
            if not saved_fingerprint:
                raise
            raise DataError(f"{e} (the run being resumed was trained on {where}{hint})") from None
    found = fingerprint(data)  # hashes every image (~0.3 s for CIFAR-10): once per run
    if saved_fingerprint and found != saved_fingerprint:
        raise DataError(
            f"{data.source or 'the data'} is not the dataset this run started on (fingerprint "
            f"{found}, run: {saved_fingerprint}, trained on {where}){hint}"
        )
    return data, found
