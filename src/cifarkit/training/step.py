"""The training step and the epoch loop: functions of a model and a loader that return a dict.

`TrainStep` is the one training step, used by every loop that trains (`train_one_epoch`, the LR
range test): an optional batch hook, forward under autocast, loss, backward with the gradient scaler
(a no-op unless fp16), then the optimiser, schedule and weight-averager updates. The caller
(`trainer.fit`, a notebook) keeps the history; nothing here writes files. Loops print a progress bar
when asked to.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..base import CifarkitError
from ..compiled import guarded
from ..hardware import autocast
from ..models import checked_forward
from ..models.check import (
    NetworkError,
    OutOfMemory,
    describe_output,
    failure_text,
    is_out_of_memory,
    logits_of,
    network_name,
)
from ..optim import Averager, make_grad_scaler

BatchFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
# (what the network returned in training mode, labels) -> loss
LossFn = Callable[[object, torch.Tensor], torch.Tensor]


class DivergenceError(CifarkitError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainStep:
    """One optimiser step on a batch, in two halves so the caller can check the loss in between:
    ``hits, loss = step.backward(x, y)`` then ``step.update()``.

    `batch_fn(x, y) -> (x, y)` (optional) changes each batch before the forward pass, e.g. MixUp /
    CutMix; it may return soft labels (N, classes), which the loss takes as probabilities.
    `loss_fn(out, y) -> loss` (optional) replaces the label-smoothed cross-entropy; `out` is
    whatever the network's forward returned in training mode (a tuple or dict with auxiliary outputs
    too), and the training accuracy is counted from its first (N, 10) tensor
    (`models.check.logits_of`). The scaler multiplies the loss only in fp16 (`make_grad_scaler`);
    otherwise it passes everything through unchanged.
    """

    # the module to run: the network or a compiled wrapper of it
    model: nn.Module
    optimizer: torch.optim.Optimizer
    amp_dtype: Optional[torch.dtype] = None
    label_smoothing: float = 0.0
    # stepped once per optimiser step (every schedule here is per batch)
    scheduler: object = None
    averager: Optional[Averager] = None  # EMA or Lookahead: updated after every optimiser step
    batch_fn: Optional[BatchFn] = None
    loss_fn: Optional[LossFn] = None
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.device = next(self.model.parameters()).device
        self.scaler = make_grad_scaler(self.amp_dtype, self.device)

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward -> (correct predictions, mean loss), both still on the device."""
        if self.batch_fn is not None:
            x, y = self.batch_fn(x, y)
        labels = y if y.dim() == 1 else y.argmax(1)  # soft labels count as their most likely class

        def work() -> tuple[torch.Tensor, torch.Tensor]:
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.amp_dtype):
                if self.loss_fn is None:
                    # (N, 10) float scores, or one line saying what it gave
                    out = checked_forward(self.model, x)
                    loss = F.cross_entropy(out.float(), y, label_smoothing=self.label_smoothing)
                else:
                    out, loss = self._own_loss(x, y)
            # before backward: a CUDA graph may reuse `out` afterwards
            hits = (out.argmax(1) == labels).sum()
            try:
                self.scaler.scale(loss).backward()
            except (RuntimeError, MemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                raise OutOfMemory(
                    f"out of memory in the backward pass of a batch of {len(x)} images: lower"
                    " batch_size, or use a smaller network"
                ) from None
            return hits, loss

        return guarded(self.model, work)  # a compiled model that fails here falls back to eager

    def _own_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the logits, loss_fn's loss) of a forward whose output may hold more than the logits."""
        out = checked_forward(self.model, x, any_output=True)
        try:
            loss = self.loss_fn(out, y)
        except Exception as e:  # noqa: BLE001 - the student's loss function: one line, naming its line
            raise NetworkError(
                f"loss_fn fails on what {network_name(self.model)} returned "
                f"({describe_output(out)}): {failure_text(e)}"
            ) from e
        if not (isinstance(loss, torch.Tensor) and loss.is_floating_point() and loss.numel() == 1):
            got = (
                f"a tensor of shape {tuple(loss.shape)}"
                if isinstance(loss, torch.Tensor)
                else describe_output(loss)
            )
            raise NetworkError(
                f"loss_fn returned {got}; it must return the loss, one float (a scalar tensor)"
            )
        return logits_of(out, self.model, len(x)), loss.float().reshape(())

    def update(self) -> None:
        """The optimiser step (skipped by the fp16 scaler when gradients overflowed), then schedule
        and averager."""
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.averager is not None:
            self.averager.update(self.model)


def _check_interval(device: torch.device, check_every: int) -> int:
    """Steps between host reads of the loss: every step on a CPU (reading is free), else
    `check_every`."""
    return 1 if device.type == "cpu" else max(1, check_every)


def _divergence(
    value: float, epoch: int, first: int, last: int, lrs: list[float]
) -> DivergenceError:
    """The error for a non-finite loss somewhere in steps first..last (1-based) of `epoch`
    (0-based)."""
    where = f"step {last}" if first == last else f"between steps {first} and {last}"
    lo, hi = lrs[first - 1], lrs[last - 1]
    lr = f"lr {lo:.4g}" if f"{lo:.4g}" == f"{hi:.4g}" else f"lr {lo:.4g} to {hi:.4g}"
    return DivergenceError(
        f"loss is {value} at epoch {epoch + 1}, {where} ({lr}); stopping. "
        "Lower --lr (or use --precision fp32) and start again"
    )


def train_one_epoch(
    step: TrainStep,
    loader,
    *,
    epoch: int = 0,
    progress: bool = True,
    check_every: int = 50,
    between_batches: Callable[[], None] | None = None,
) -> dict:
    """One pass over `loader` with `step`. Returns loss (mean per image), accuracy (%), counts,
    seconds, LRs.

    The bar reads like the seed's log: ``Loss=... Batch_id=... Accuracy=...``. Loss and correct
    counts are summed on the device; the host reads them only at check points: every `check_every`
    steps and at the last step on a GPU (each read drains the GPU's queue of launched work), every
    step on a CPU (free there). A NaN / Inf loss raises DivergenceError at the check, before that
    step's optimiser update (on a GPU the steps since the previous check were already applied).
    `between_batches()` is called after every step, outside the network's code (`fit` passes its
    signal check there).
    """
    # plain text bars: they read well in a terminal, a saved notebook and on GitHub
    from tqdm import tqdm

    device = step.device
    step.model.train()
    every = _check_interval(device, check_every)
    # Summed per-image loss: NaN / Inf as soon as any step's loss was (cross-entropy is >= 0), so it
    # is the divergence flag too and costs no extra kernel per step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, lrs, checked, n = 0, [], 0, len(loader)  # checked: steps known to have a finite loss
    start = time.perf_counter()
    bar = tqdm(loader, disable=not progress, ncols=110, mininterval=2.0, file=sys.stdout)
    for i, (x, y) in enumerate(bar):
        hits, loss = step.backward(x, y)
        loss_sum += loss.detach() * len(y)
        correct += hits
        seen += len(y)
        lrs.append(step.optimizer.param_groups[0]["lr"])  # a Python float: no GPU sync
        if (i + 1) % every == 0 or i == n - 1:
            # 1 sync
            total, current, right = torch.stack([loss_sum, loss.detach(), correct.float()]).tolist()
            if not math.isfinite(total):
                raise _divergence(total, epoch, checked + 1, i + 1, lrs)
            checked = i + 1
            if progress:
                bar.set_description(
                    f"Loss={current:.4f} Batch_id={i} Accuracy={100.0 * right / seen:.2f}",
                    refresh=False,
                )
        step.update()
        if between_batches is not None:
            between_batches()
    # waits for the queued last step
    total, right = torch.stack([loss_sum, correct.float()]).tolist()
    seconds = time.perf_counter() - start
    return {
        "loss": total / seen,
        "accuracy": 100.0 * right / seen,
        "correct": int(right),
        "total": seen,
        "seconds": seconds,
        "images_per_second": seen / seconds,
        "lr": lrs[-1],
        "lrs": lrs,
    }
