"""The learning-rate range test (Leslie Smith's "LR finder"): how the one-cycle peak can be chosen.

Train for `num_iter` steps while the learning rate grows exponentially from `start_lr` to `end_lr`,
and record the training loss. The loss falls slowly at tiny rates, fastest somewhere in the middle,
bottoms out, then turns up and diverges. Smith's rule for the top of a cyclical / one-cycle schedule
is the largest rate at which the loss still falls: the minimum of the smoothed curve (`suggestion`).
The steepest descent (fastai's pick for a constant rate) and minimum / 10 are reported beside it; on
the seed network both sit an order of magnitude below the recipe's one-cycle peak of 0.4 (tuned on
the validation split, docs/results.md), and the notebook prints all three beside 0.4.

Why not torch-lr-finder (0.2.2, the library for this): measured on this package's optimiser, it
(1) sets every parameter group to the same start LR or moves every group to the same `end_lr`, so
the BatchNorm group's `bias_lr_scale` (64x in the compact recipe) falls to 8x halfway and 1x at the
end, and (2) keeps stepping after the loss turns NaN (``NaN > threshold`` is False), to the last
iteration. The loop below takes its step from training (`step.TrainStep`: the same precision, loss
scaling and batch hook) and keeps every group's ratio to the first group's LR.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from torch import nn

from ..analysis.lrplot import describe, plot_lr_find
from ..atomic import WriteError, atomic_write_json
from ..base import ConfigError
from ..config import TrainConfig
from ..hardware import hardware_string
from ..models.identity import source_fingerprint
from ..models.keep import forked_rng, kept_modes
from ..optim import make_optimizer
from .build import Run, build_run
from .step import BatchFn, DivergenceError, LossFn, TrainStep

OptimizerSpec = Union[
    torch.optim.Optimizer, Callable[[nn.Module], torch.optim.Optimizer], TrainConfig
]


@dataclass
class LRFindResult:
    """One range test: the LR (of the first parameter group) and the loss at every step, and the
    picks.

    All picks read the causally smoothed loss (an exponential moving average, as torch-lr-finder and
    fastai draw it). It lags the raw loss by ~1/smooth steps, so every reading sits to the right of
    the raw curve's feature: by about a decade at the defaults (~20 of 100 steps spanning 5-6
    decades).
    """

    lrs: list[float]  # learning rate of parameter group 0 at each step
    losses: list[float]  # training loss, exponentially smoothed (what the suggestion reads)
    raw_losses: list[float]  # training loss of each batch, as measured
    # the recommended one-cycle peak: the LR at the minimum of the smoothed loss
    suggestion: float
    # LR of the steepest descent of the smoothed loss per decade, before its minimum
    steepest_lr: float
    min_loss_lr: float  # = suggestion (named for what it is)
    # stopped early: the smoothed loss passed diverge_th x its minimum, or a NaN
    diverged: bool
    start_lr: float
    end_lr: float
    num_iter: int
    seconds: float = 0.0
    rule: str = "minimum of the smoothed loss"
    recipe_lr: float | None = None  # the configured peak LR, when run through `lr_find`

    @property
    def min_loss_lr_over_10(self) -> float:
        return self.min_loss_lr / 10

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return describe(self)

    def plot(self, path: str | Path | None = None):
        """The loss-vs-LR figure (`plot_lr_find`), saved to `path` if given."""
        return plot_lr_find(self, path=path)


def suggest(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """(LR at the steepest descent of `losses` per log-LR before their minimum, LR at their
    minimum)."""
    lo = int(np.argmin(losses))
    if lo == 0:  # the loss never fell: the smallest rate tried is the only defensible pick
        return lrs[0], lrs[0]
    slope = np.gradient(np.asarray(losses[: lo + 1]), np.log10(lrs[: lo + 1]))
    return lrs[int(np.argmin(slope))], lrs[lo]


def _build_optimizer(model: nn.Module, optimizer: OptimizerSpec) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if isinstance(optimizer, TrainConfig):
        return make_optimizer(model, optimizer)
    if callable(optimizer):
        return optimizer(model)
    raise ConfigError(
        "optimizer must be a torch optimizer, a TrainConfig or a function of the model, "
        f"got {type(optimizer).__name__}"
    )


def _check_range(num_iter: int, start_lr: float, end_lr: float) -> None:
    if not isinstance(num_iter, int) or num_iter < 2:
        raise ConfigError(f"num_iter must be an integer >= 2, got {num_iter!r}")
    if not 0 < start_lr < end_lr:
        raise ConfigError(
            f"need 0 < start_lr < end_lr, got start_lr={start_lr!r}, end_lr={end_lr!r}"
        )


def lr_range_test(
    model: nn.Module,
    loader,
    optimizer: OptimizerSpec,
    *,
    start_lr: float = 1e-5,
    end_lr: float = 10.0,
    num_iter: int = 100,
    amp_dtype: torch.dtype | None = None,
    label_smoothing: float | None = None,
    smooth: float = 0.05,
    diverge_th: float = 5.0,
    progress: bool = False,
    batch_fn: BatchFn | None = None,
    loss_fn: LossFn | None = None,
) -> LRFindResult:
    """Exponential LR range test of `model` on `loader` (cycled if shorter than `num_iter`).

    `optimizer` is the optimiser to test (its parameter groups keep their LR ratios to group 0), a
    TrainConfig (`make_optimizer(model, cfg)`: the training optimiser) or a function model ->
    optimiser. The model's weights, buffers, train/eval flags and gradients, the optimiser's state,
    the loader's epoch and the global RNG states are restored afterwards: the test leaves no trace.
    Each step is training's own (`step.TrainStep`, with `batch_fn` and `loss_fn` if given), without
    schedule or weight averaging.
    """
    _check_range(num_iter, start_lr, end_lr)
    if not 0 <= smooth < 1 or diverge_th <= 1:
        raise ConfigError(
            f"need 0 <= smooth < 1 and diverge_th > 1, got {smooth!r}, {diverge_th!r}"
        )
    if label_smoothing is None:
        label_smoothing = optimizer.label_smoothing if isinstance(optimizer, TrainConfig) else 0.0
    opt = _build_optimizer(model, optimizer)
    device = next(model.parameters()).device
    # Snapshot everything a training step touches; restored in `finally`, even after Ctrl-C.
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    grads = [(p, p.grad) for p in model.parameters()]
    loader_epoch = getattr(loader, "epoch", None)
    base = opt.param_groups[0]["lr"]
    ratios = [g["lr"] / base if base else 1.0 for g in opt.param_groups]  # e.g. bias_lr_scale
    step = TrainStep(model, opt, amp_dtype, label_smoothing, batch_fn=batch_fn, loss_fn=loss_fn)
    lrs, raw, smoothed, diverged = [], [], [], False
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_iter, ncols=110, mininterval=2.0, desc="LR range test")
    try:
        with forked_rng(), kept_modes(model):
            model.train()
            batches = iter(loader)
            for i in range(num_iter):
                lr = start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))
                for group, ratio in zip(opt.param_groups, ratios):
                    group["lr"] = lr * ratio
                try:
                    x, y = next(batches)
                except StopIteration:  # a small subset: start another (differently shuffled) pass
                    if loader_epoch is not None:
                        loader.set_epoch(loader.epoch + 1)
                    batches = iter(loader)
                    x, y = next(batches)
                # a plain DataLoader
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                _, loss = step.backward(x, y)
                value = loss.item()
                # a NaN never compares greater than a threshold: stop here
                if not math.isfinite(value):
                    diverged = True
                    break
                step.update()
                lrs.append(lr)
                raw.append(value)
                smoothed.append(value if i == 0 else smooth * value + (1 - smooth) * smoothed[-1])
                if bar is not None:
                    bar.update()
                    bar.set_postfix_str(f"lr={lr:.3g} loss={smoothed[-1]:.3f}", refresh=False)
                if smoothed[-1] > diverge_th * min(smoothed):
                    diverged = True
                    break
    finally:
        if bar is not None:
            bar.close()
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
        for p, g in grads:
            p.grad = g
        if loader_epoch is not None:
            loader.set_epoch(loader_epoch)
    if not lrs:
        raise DivergenceError(
            f"the loss was not finite at the first step (lr {start_lr:g}): lower the "
            "start LR or check the network"
        )
    steepest, at_min = suggest(lrs, smoothed)
    return LRFindResult(
        lrs,
        smoothed,
        raw,
        at_min,
        steepest,
        at_min,
        diverged,
        start_lr,
        end_lr,
        num_iter,
        seconds=time.perf_counter() - start,
    )


# Fields the range test never reads (it trains num_iter steps at its own LRs, without schedule or
# averaging): changing them does not change its result, so they are left out of the key it is kept
# under.
_NOT_READ = (
    "out",
    "progress",
    "data",
    "data_root",
    "data_fingerprint",
    "check_every",
    "eval_batch_size",
    "tta",
    "epochs",
    "lr",
    "schedule",
    "warmup",
    "lr_start",
    "lr_end",
    "step_size",
    "milestones",
    "gamma",
    "ema",
    "lookahead",
    "compile",
    "cuda_graphs",
    "limit_test",
)


def kept_result_path(
    run: Run,
    hooks: tuple,
    limits: tuple[int, float, float],
) -> Path:
    """Where the range test of exactly this setting is kept: RUN/lr-range-<key>.json in the run
    folder `cfg.out`, the key a hash of every config field the test reads, the data's fingerprint,
    the network's code (`models.identity`: all three as `build_run` recorded them), the source of
    the hooks (batch_fn, loss_fn), the range, the device, precision and layout."""
    cfg = run.cfg
    key = {
        "config": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_READ},
        "data": cfg.data_fingerprint,
        "network": run.identity,
        "hooks": [None if h is None else (source_fingerprint(h) or repr(h)) for h in hooks],
        "range": list(limits),
        "device": hardware_string(run.device),
        "precision": str(run.amp_dtype),
        "layout": run.nhwc,
        "torch": torch.__version__,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.out) / f"lr-range-{digest}.json"


def _load_kept(path: Path) -> LRFindResult | None:
    """The kept result, or None (the test runs again) when it is absent, truncated, from another
    version, or holds values no range test gives (empty or uneven curves, a suggestion that is not
    a positive learning rate)."""
    try:
        result = LRFindResult(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    curves = (result.lrs, result.losses, result.raw_losses)
    numbers = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for c in curves for v in c
    )
    positive = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")
        for v in (result.suggestion, result.steepest_lr, result.min_loss_lr)
    )
    even = len(result.lrs) >= 2 and len({len(c) for c in curves}) == 1
    return result if numbers and positive and even else None


def lr_find(
    cfg: TrainConfig,
    data=None,
    *,
    model: nn.Module | Callable[[], nn.Module] | None = None,
    batch_fn: BatchFn | None = None,
    loss_fn: LossFn | None = None,
    num_iter: int = 100,
    start_lr: float = 1e-5,
    end_lr: float = 10.0,
    path: str | Path | None = None,
    keep: bool = True,
) -> LRFindResult:
    """The range test for a config: its network (initialised as `fit` does; or `model`, an object
    passed beside the config, whose weights the test restores afterwards), training split, batch
    size, augmentation, optimiser, label smoothing, device and precision. Loads the data when `data`
    is None; saves the plot to `path` if given. (Runs eagerly: `compile` and `cuda_graphs` do not
    apply.)

    `keep`: the result is kept in the run folder (`kept_result_path`: keyed by everything the test
    reads, the network's code included), and a call with the same settings, network and data shows
    it again instead of training (a second "Run all"); any change runs the test again. keep=False
    always runs it and writes nothing."""
    _check_range(num_iter, start_lr, end_lr)  # before the data loads: a typo fails at once
    with forked_rng():  # the caller's random streams are left where they were
        # built as `fit` builds it (the same seed: the same initial weights), without writing
        # anything
        run = build_run(cfg, data, model=model, upto="loaders", verbose=False)
    model, amp_dtype = run.model, run.amp_dtype
    limits = dict(num_iter=num_iter, start_lr=start_lr, end_lr=end_lr)
    kept = kept_result_path(run, (batch_fn, loss_fn), tuple(limits.values()))
    result = _load_kept(kept) if keep else None
    if result is not None:
        print(
            f"LR range test: the result kept in {Path(cfg.out).name}/{kept.name} (same settings,"
            f" network and data, measured in {result.seconds:.0f} s; not run again: pass keep=False"
            " or delete the file)"
        )
    else:
        result = _run_and_keep(
            cfg, run.loader, model, amp_dtype, (batch_fn, loss_fn), kept if keep else None, **limits
        )
    if path is not None:
        import matplotlib.pyplot as plt

        plt.close(plot_lr_find(result, cfg.lr, path=path))  # saved, not also shown by a notebook
    return result


def _run_and_keep(cfg, loader, model, amp_dtype, hooks, kept: Path | None, **limits):
    result = lr_range_test(
        model,
        loader,
        cfg,
        **limits,
        amp_dtype=amp_dtype,
        label_smoothing=cfg.label_smoothing,
        progress=cfg.progress,
        batch_fn=hooks[0],
        loss_fn=hooks[1],
    )
    result.recipe_lr = cfg.lr
    if kept is not None:
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(kept, result.to_dict())
        except (OSError, WriteError):
            pass  # a read-only run folder only costs the next call the test's time
    return result
