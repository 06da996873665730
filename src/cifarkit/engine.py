"""The training step and loop, and evaluation: functions of a model and a loader that return a dict.

`TrainStep` is the one training step, used by every loop that trains (`train_one_epoch`, the LR range
test): an optional batch hook, forward under autocast, loss, backward with the gradient scaler (a no-op
unless fp16), then the optimiser, schedule and weight-averager updates. The caller (`trainer.fit`, a
notebook) keeps the history; nothing here writes files. Loops print a progress bar when asked to.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import CifarkitError
from .compiled import guarded
from .data.loader import DeviceLoader, normalize
from .models import as_batch, build_model, checked_forward, probe
from .models.check import (PROBE_BATCH, NetworkError, describe_output, failure_text, logits_of,
                           network_name, output_sum)
from .models.identity import materialize
from .hardware import PRECISION_NAME, autocast, choose_channels_last, choose_precision, is_nhwc, model_is_nhwc
from .optim import Averager, make_grad_scaler

BatchFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
LossFn = Callable[[object, torch.Tensor], torch.Tensor]  # (what the network returned in training mode, labels) -> loss


class DivergenceError(CifarkitError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainStep:
    """One optimiser step on a batch, in two halves so the caller can check the loss in between:
    ``hits, loss = step.backward(x, y)`` then ``step.update()``.

    `batch_fn(x, y) -> (x, y)` (optional) changes each batch before the forward pass, e.g. MixUp / CutMix;
    it may return soft labels (N, classes), which the loss takes as probabilities. `loss_fn(out, y) -> loss`
    (optional) replaces the label-smoothed cross-entropy; `out` is whatever the network's forward returned
    in training mode (a tuple or dict with auxiliary outputs too), and the training accuracy is counted from
    its first (N, 10) tensor (`models.check.logits_of`). The scaler multiplies the loss only in fp16
    (`make_grad_scaler`); otherwise it passes everything through unchanged.
    """

    model: nn.Module                      # the module to run: the network or a compiled wrapper of it
    optimizer: torch.optim.Optimizer
    amp_dtype: Optional[torch.dtype] = None
    label_smoothing: float = 0.0
    scheduler: object = None              # stepped once per optimiser step (every schedule here is per batch)
    averager: Optional[Averager] = None   # EMA or Lookahead: updated after every optimiser step
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
                    out = checked_forward(self.model, x)  # (N, 10) float scores, or one line saying what it gave
                    loss = F.cross_entropy(out.float(), y, label_smoothing=self.label_smoothing)
                else:
                    out, loss = self._own_loss(x, y)
            hits = (out.argmax(1) == labels).sum()  # before backward: a CUDA graph may reuse `out` afterwards
            self.scaler.scale(loss).backward()
            return hits, loss
        return guarded(self.model, work)  # a compiled model that fails here falls back to eager

    def _own_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the logits, loss_fn's loss) of a forward whose output may hold more than the logits."""
        out = checked_forward(self.model, x, any_output=True)
        try:
            loss = self.loss_fn(out, y)
        except Exception as e:  # noqa: BLE001 - the student's loss function: one line, naming its line
            raise NetworkError(f"loss_fn fails on what {network_name(self.model)} returned "
                               f"({describe_output(out)}): {failure_text(e)}") from e
        if not (isinstance(loss, torch.Tensor) and loss.is_floating_point() and loss.numel() == 1):
            got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else describe_output(loss)
            raise NetworkError(f"loss_fn returned {got}; it must return the loss, one float (a scalar tensor)")
        return logits_of(out, self.model, len(x)), loss.float().reshape(())

    def update(self) -> None:
        """The optimiser step (skipped by the fp16 scaler when gradients overflowed), then schedule and averager."""
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.averager is not None:
            self.averager.update(self.model)


def _check_interval(device: torch.device, check_every: int) -> int:
    """Steps between host reads of the loss: every step on a CPU (reading is free), else `check_every`."""
    return 1 if device.type == "cpu" else max(1, check_every)


def _divergence(value: float, epoch: int, first: int, last: int, lrs: list[float]) -> DivergenceError:
    """The error for a non-finite loss somewhere in steps first..last (1-based) of `epoch` (0-based)."""
    where = f"step {last}" if first == last else f"between steps {first} and {last}"
    lo, hi = lrs[first - 1], lrs[last - 1]
    lr = f"lr {lo:.4g}" if f"{lo:.4g}" == f"{hi:.4g}" else f"lr {lo:.4g} to {hi:.4g}"
    return DivergenceError(f"loss is {value} at epoch {epoch + 1}, {where} ({lr}); stopping. "
                           "Lower --lr (or use --precision fp32) and start again")


def train_one_epoch(step: TrainStep, loader, *, epoch: int = 0, progress: bool = True, check_every: int = 50,
                    between_batches: Callable[[], None] | None = None) -> dict:
    """One pass over `loader` with `step`. Returns loss (mean per image), accuracy (%), counts, seconds, LRs.

    The bar reads like the seed's log: ``Loss=... Batch_id=... Accuracy=...``. Loss and correct counts are
    summed on the device; the host reads them only at check points: every `check_every` steps and at the
    last step on a GPU (each read drains the GPU's queue of launched work), every step on a CPU (free
    there). A NaN / Inf loss raises DivergenceError at the check, before that step's optimiser update
    (on a GPU the steps since the previous check were already applied). `between_batches()` is called after
    every step, outside the network's code (`fit` passes its signal check there).
    """
    from tqdm import tqdm  # plain text bars: they read well in a terminal, a saved notebook and on GitHub

    device = step.device
    step.model.train()
    every = _check_interval(device, check_every)
    # Summed per-image loss: NaN / Inf as soon as any step's loss was (cross-entropy is >= 0), so it is
    # the divergence flag too and costs no extra kernel per step.
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
            total, current, right = torch.stack([loss_sum, loss.detach(), correct.float()]).tolist()  # 1 sync
            if not math.isfinite(total):
                raise _divergence(total, epoch, checked + 1, i + 1, lrs)
            checked = i + 1
            if progress:
                bar.set_description(f"Loss={current:.4f} Batch_id={i} Accuracy={100.0 * right / seen:.2f}",
                                    refresh=False)
        step.update()
        if between_batches is not None:
            between_batches()
    total, right = torch.stack([loss_sum, correct.float()]).tolist()  # waits for the queued last step
    seconds = time.perf_counter() - start
    return {"loss": total / seen, "accuracy": 100.0 * right / seen, "correct": int(right), "total": seen,
            "seconds": seconds, "images_per_second": seen / seconds, "lr": lrs[-1], "lrs": lrs}


@torch.inference_mode()
def predict(model: nn.Module, loader, *, amp_dtype: torch.dtype | None = None,
            tta: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, 10) float32 and labels (N,), both on the CPU, in the loader's order.

    tta="flip" averages the logits of each image and its mirror image; "flip-translate" (airbench) gives
    that average weight 1/2 and the flip-averages of the image shifted by one pixel up-left and down-right
    (reflection padding) 1/4 each: six views.
    """
    device = next(model.parameters()).device
    model.eval()

    def mirror_avg(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (checked_forward(model, x).float() + checked_forward(model, x.flip(3)).float())

    probs, labels = [], []
    for x, y in loader:
        with autocast(device, amp_dtype):
            if tta == "none":
                logits = checked_forward(model, x).float()
            elif tta == "flip":
                logits = mirror_avg(x)
            else:
                padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
                shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
                layout = torch.channels_last if is_nhwc(x) else torch.contiguous_format  # as the loader gave it
                logits = 0.5 * mirror_avg(x) + 0.25 * sum(mirror_avg(s.contiguous(memory_format=layout))
                                                           for s in shifted)
        probs.append(logits.softmax(1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def score(probs: torch.Tensor, labels: torch.Tensor, *, verbose: bool = True, label: str = "Test") -> dict:
    """Loss (mean per image), accuracy (%) and counts from predicted probabilities; prints the seed's line."""
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    correct = int((probs.argmax(1) == labels).sum())
    total = len(labels)
    acc = 100.0 * correct / total
    if verbose:
        print(f"\n{label} set: Average loss: {loss:.4f}, Accuracy: {correct}/{total} ({acc:.2f}%)\n")
    return {"loss": loss, "accuracy": acc, "correct": correct, "total": total}


def evaluate(model: nn.Module, loader, *, amp_dtype: torch.dtype | None = None, tta: str = "none",
             verbose: bool = True, label: str = "Test") -> dict:
    """`predict` then `score`: loss, accuracy (%), counts and seconds on `loader`."""
    start = time.perf_counter()
    probs, labels = predict(model, loader, amp_dtype=amp_dtype, tta=tta)
    return {**score(probs, labels, verbose=verbose, label=label), "seconds": time.perf_counter() - start}


def predict_images(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, precision: str = "auto",
                   tta: str = "none", batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict` on uint8 `images` (N, 3, 32, 32): batched on the model's device in the model's memory
    layout, with `precision` resolved for that device. Returns (probabilities, labels) on the CPU."""
    device = next(model.parameters()).device
    n = len(images)
    loader = DeviceLoader(as_batch(images), as_batch(labels), max(batch_size, PROBE_BATCH), train=False,
                          device=device, channels_last=model_is_nhwc(model))
    amp, _ = choose_precision(precision, device)
    probs, labels = predict(model, loader, amp_dtype=amp, tta=tta)
    return probs[:n], labels[:n]  # a lone image ran as a batch of two (`models.check.as_batch`)


def model_for_config(cfg, train_images: torch.Tensor, device: torch.device, *, model: nn.Module | None = None,
                     from_data: bool = True, verbose: bool = False, layout: bool | None = None) -> nn.Module:
    """The network of `cfg` (or the object `model`, when one was passed beside the config) on `device`, in
    the memory layout the config's `channels_last` picks (on a CPU, "auto" measures both layouts with this
    network: `hardware.choose_channels_last`; `verbose` prints the choice). With `from_data`, a network
    that initialises itself from data (CompactNet's whitening conv) sees the first 5,000 training images
    (a resumed run loads those weights instead). `layout` (True: NHWC) is the layout a resumed run chose
    when it started: kept, so it computes as it did, whatever a new measurement would say."""
    net = model if model is not None else build_model(cfg.model, cfg.dropout)
    materialize(net)  # lazy modules get their parameters before anything counts, moves or measures them
    if from_data and hasattr(net, "init_from_data"):
        net.init_from_data(normalize(train_images[:5000]))
    net = net.to(device)
    amp_dtype = choose_precision(cfg.precision, device)[0]
    if layout is not None:
        nhwc, why = bool(layout), f"{'channels_last' if layout else 'NCHW'} (as the run chose when it started)"
    else:
        nhwc, why = choose_channels_last(cfg.channels_last, device, amp_dtype, model=net,
                                         batch=min(cfg.batch_size, 64))
    if verbose:
        print(f"layout: {why}")
    net = net.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    probe(net, normalize(train_images[:2].to(device), nhwc))  # refuse a network that cannot classify, before training
    return net


def precision_that_works(model: nn.Module, x: torch.Tensor, device: torch.device, amp_dtype: torch.dtype | None,
                         reason: str) -> tuple[torch.dtype | None, str]:
    """(`amp_dtype`, `reason`) when one forward + backward of `x` through a copy of `model` runs in that
    precision with a finite result; (None, why) when it does not but fp32 does, so "auto" never picks a
    precision the network cannot train in. A network that fails in fp32 too keeps `amp_dtype`: the checks
    that follow report its own error. The copy runs with the random state forked; `model` is not touched."""
    if amp_dtype is None:
        return amp_dtype, reason

    def step(dtype) -> None:
        with autocast(device, dtype):
            total = output_sum(probe(x))
        if not torch.isfinite(total):
            raise FloatingPointError("its output is not finite")
        total.backward()

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = copy.deepcopy(model).train()
        try:
            step(amp_dtype)
            return amp_dtype, reason
        except Exception as e:  # noqa: BLE001 - the network's own failure in this precision
            why = failure_text(e)
        try:
            step(None)
        except Exception:  # noqa: BLE001 - fails in fp32 as well: not the precision's fault
            return amp_dtype, reason
    new = f"fp32: your network fails in {PRECISION_NAME[amp_dtype]} ({why}), so fp32"
    print(f"precision: {new}")
    return None, new
