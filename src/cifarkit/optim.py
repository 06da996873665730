"""Optimisers, fp16 loss scaling, learning-rate schedules and weight averaging (EMA, lookahead),
each built from a validated TrainConfig (the values are trusted here)."""

from __future__ import annotations

import copy
import warnings
from typing import Protocol, Union

import torch
from torch import nn

from .config import TrainConfig


# ---------------------------------------------------------------- optimiser
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by `cfg.optimizer`, over three parameter groups.

    Groups (the same for every optimiser): conv / linear weights (ndim > 1) get `cfg.weight_decay`;
    biases and BatchNorm parameters get none (decaying them hurts); BatchNorm parameters train at
    `cfg.lr * cfg.bias_lr_scale` (airbench uses 64 for its BatchNorm shifts, whose gradients are
    small).

    - "sgd": momentum `cfg.momentum`, Nesterov if `cfg.nesterov`. weight_decay is L2: wd * w is
      added to the gradient.
    - "adam": betas (`cfg.momentum`, 0.999), i.e. the momentum field is beta1. weight_decay is L2
      added to the gradient, so Adam's per-parameter scaling divides it too (it is NOT decoupled).
    - "adamw": as adam, but weight_decay is decoupled (torch's AdamW): each step multiplies the
      weights by (1 - lr * wd), independently of the gradient statistics. Because it is scaled by
      lr (~1e-3 for Adam), AdamW wants a much larger weight_decay than SGD's 1e-3, typically
      0.01-0.1.
    Adam / AdamW want a peak lr near 1e-3, not SGD's 0.4.

    On CUDA the fused kernels are used (one kernel for all parameters). They also matter for fp16:
    with a fused optimiser GradScaler skips an overflowed step on the GPU; with any other it reads
    the overflow flag on the host every step, a GPU sync that stalls the launch queue.
    """
    norm = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    }
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim <= 1 and id(p) not in norm], "weight_decay": 0.0},
        {
            "params": [p for p in params if id(p) in norm],
            "weight_decay": 0.0,
            "lr": cfg.lr * cfg.bias_lr_scale,
        },
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        cls, kwargs = (
            torch.optim.SGD,
            dict(momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0),
        )
    else:  # "adam" / "adamw"
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        kwargs = dict(betas=(cfg.momentum, 0.999))
    if params and all(p.is_cuda for p in params):
        # fresh group dicts: a failed constructor may already have filled in its defaults ("fused":
        # True)
        try:
            return cls([dict(g) for g in groups], lr=cfg.lr, fused=True, **kwargs)
        except (TypeError, RuntimeError, ValueError):
            # an older torch without fused kernels for this optimiser: the default (foreach) ones
            pass
    return cls(groups, lr=cfg.lr, **kwargs)


def make_grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled exactly when training in fp16 (disabled, it passes loss and step
    through).

    fp16's 5-bit exponent flushes gradients below ~6e-8 to zero; the scaler multiplies the loss by
    up to 2**16 before backward, unscales before the step and skips (on the GPU, with a fused
    optimiser) steps whose gradients overflowed. bf16 has fp32's exponent range and needs none.
    """
    enabled = dtype == torch.float16
    try:
        return torch.amp.GradScaler(device.type, enabled=enabled)
    # e.g. no scaler for MPS in an old torch
    except (RuntimeError, ValueError, TypeError, AssertionError) as e:
        warnings.warn(
            f"fp16 without loss scaling: no GradScaler for {device.type} ({e})", stacklevel=2
        )
        return torch.amp.GradScaler("cpu", enabled=False)


# ---------------------------------------------------------------- schedules
def lr_factor(
    step: int, total: int, schedule: str, warmup: float, start: float = 0.0, end: float = 0.0
) -> float:
    """Multiplier on the peak learning rate at `step` of `total` for the schedules built by hand.

    "linear": from `start` up to 1 over the first `warmup` fraction of the steps, then down to
    `end`.
    """
    if schedule == "constant":
        return 1.0
    w = max(1, round(warmup * total))
    if step < w:
        return start + (1 - start) * (step + 1) / w
    return end + (1 - end) * max(0.0, (total - step) / max(1, total - w))


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule. Every schedule here advances once per BATCH: call `.step()` after each
    optimiser step (`train_one_epoch` does), never once per epoch.

    - "onecycle": torch's OneCycleLR, linear warmup over `cfg.warmup` of all steps then linear
    decay.
    - "linear": warmup from `cfg.lr_start` then linear decay to `cfg.lr_end` (fractions of the
    peak).
    - "constant": `cfg.lr` throughout.
    - "step": `cfg.lr` multiplied by `cfg.gamma` every `cfg.step_size` epochs, or at each epoch in
      `cfg.milestones` (epoch 10 in milestones: epochs 1-10 at lr, from the 11th on at lr x gamma).
      Both are given in EPOCHS and converted here to optimiser steps (x steps_per_epoch). This
      matters because the scheduler is stepped per batch: torch's StepLR(step_size=30) from a
      per-epoch tutorial, stepped per batch, decays after 30 batches, i.e. steps_per_epoch times too
      fast (~391x at batch 128).
    """
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=cfg.warmup or 0.01,
            anneal_strategy="linear",
            cycle_momentum=False,
            div_factor=25.0,
            final_div_factor=1e3,
        )
    if cfg.schedule == "step":
        if cfg.step_size:
            return torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma
            )
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[m * steps_per_epoch for m in cfg.milestones], gamma=cfg.gamma
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _LrLambda(total, cfg.schedule, cfg.warmup, cfg.lr_start, cfg.lr_end)
    )


class _LrLambda:
    """A picklable schedule (LambdaLR saves an object's __dict__ in its state, not a closure)."""

    def __init__(self, total: int, schedule: str, warmup: float, start: float, end: float):
        self.total, self.schedule, self.warmup, self.start, self.end = (
            total,
            schedule,
            warmup,
            start,
            end,
        )

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total, self.schedule, self.warmup, self.start, self.end)


# ---------------------------------------------------------------- weight averaging
class Averager(Protocol):
    """What the training step needs of a weight averager (EMA, Lookahead)."""

    key: str  # its entry in a checkpoint: "ema" or "lookahead"

    def update(self, model: nn.Module) -> None: ...  # after every optimiser step
    def end_epoch(self, model: nn.Module) -> None: ...  # before each evaluation
    def eval_model(self, model: nn.Module) -> nn.Module: ...  # the weights to evaluate and report
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def make_averager(
    cfg: TrainConfig, model: nn.Module, total_steps: int
) -> Union["EMA", "Lookahead", None]:
    """The config's weight averager: EMA (cfg.ema > 0), Lookahead (cfg.lookahead) or None
    (validated: not both)."""
    if cfg.ema > 0:
        return EMA(model, cfg.ema)
    return Lookahead(total_steps) if cfg.lookahead else None


class EMA:
    """Exponential moving average of a model's weights and BatchNorm statistics.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) so early averages are not dominated by the
    random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    key = "ema"

    def end_epoch(self, model: nn.Module) -> None:
        """Nothing to do: the average lives in its own copy."""

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.module  # the averaged copy is what a run evaluates and reports

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema = [t for t in self.module.state_dict().values() if t.dtype.is_floating_point]
        cur = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
        torch._foreach_lerp_(ema, cur, 1.0 - d)
        for e, c in zip(self.module.buffers(), model.buffers()):
            if not e.dtype.is_floating_point:
                e.copy_(c)  # BatchNorm's num_batches_tracked

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay, self.updates = state["decay"], state["updates"]


class Lookahead:
    """airbench's weight averaging: every `every` steps, pull an EMA towards the weights and copy it
    back.

    It starts after `start` of the `total` steps; the decay rises as 0.95**every * (step /
    total)**3, so the averaging is weak while the learning rate is high and strong at the end of
    training.
    """

    def __init__(self, total: int, start: float = 0.25, every: int = 5):
        self.total, self.start, self.every = total, round(start * total), every
        self.step, self.state = 0, None

    key = "lookahead"

    def end_epoch(self, model: nn.Module) -> None:
        self.sync(model)

    def eval_model(self, model: nn.Module) -> nn.Module:
        return model  # the average is copied into the weights themselves

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.step += 1
        if self.step < self.start or self.step % self.every:
            return
        weights = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
        if self.state is None:
            self.state = [t.detach().clone() for t in weights]
            return
        decay = 0.95**self.every * (self.step / self.total) ** 3
        torch._foreach_lerp_(self.state, weights, 1.0 - decay)
        torch._foreach_copy_(weights, self.state)

    @torch.no_grad()
    def sync(self, model: nn.Module) -> None:
        """Copy the average into the weights (done at the end of each epoch, before evaluation)."""
        if self.state is not None:
            weights = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
            torch._foreach_copy_(weights, self.state)

    def state_dict(self) -> dict:
        return {"step": self.step, "state": self.state}

    def load_state_dict(self, d: dict) -> None:
        self.step, self.state = d["step"], d["state"]
