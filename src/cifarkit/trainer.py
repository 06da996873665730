"""`fit(config)`: the whole run. Owns the history and the run folder; the engine does the steps.

Run folder layout (``config.out``):
  config.json     the TrainConfig (with the data fingerprint), written before the first epoch
  history.csv     one row per epoch (scalars, single-view evaluation), rewritten atomically after every epoch
  history.json    the same plus per-step learning rates, for the plots
  last.pt         model, EMA, optimizer, scheduler, epoch, history, RNG states: resume from here
  best.pt         the epoch with the best single-view evaluation accuracy (validation if val_split > 0)
  results.json    written when the run finishes: final single-view and TTA test results, wall time, hardware
  .lock           exists while a process owns the folder (its lock dies with the process)

`fit` reads as four named steps: `_setup` (config, data, network, optimiser), `_restore` (a checkpoint's
state), `_train_loop` (epochs, checkpoints) and `_final_results` (the separate final test).
"""
from __future__ import annotations

import dataclasses
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, atomic_write_json, config_from_checkpoint, load_checkpoint, load_weights, \
    save_checkpoint
from .config import TTA_VIEWS, TrainConfig
from .data import Cifar10, DataError, balanced_indices, fingerprint, load_cifar10, split_train_val
from .engine import (EMA, Lookahead, choose_precision, evaluate, make_grad_scaler, make_optimizer, make_scheduler,
                     predict, prepare_train_model, resolve_device, train_one_epoch)
from .loader import DeviceLoader, normalize
from .models import build_model, count_parameters
from .runstate import (CSV_COLUMNS, RUNTIME_FIELDS, hardware_string, peak_rss_mb, resume_config,  # noqa: F401
                       rng_state, set_rng_state, write_history)
from .rundir import (RunDirError, RunLock, StopSignals, check_run_dir, clear_run_dir, ensure_writable,
                     interrupt_message, remove_temp_files, run_state)

VAL_SEED = 12345  # the validation split is the same for every training seed, so runs compare on it



@dataclass
class Splits:
    """The images a run trains on, evaluates on each epoch ("val" or "test"), and finally tests on."""

    train: tuple[torch.Tensor, torch.Tensor]
    eval: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    eval_name: str  # "Validation" or "Test"


def make_splits(cfg: TrainConfig, data: Cifar10) -> Splits:
    """Apply --limit-train / --limit-test (balanced, seeded) and carve the validation split."""
    tx, ty = data.train_images, data.train_labels
    if cfg.limit_train:
        idx = balanced_indices(ty, cfg.limit_train, cfg.seed)
        tx, ty = tx[idx], ty[idx]
    test = (data.test_images, data.test_labels)
    if cfg.limit_test:
        idx = balanced_indices(test[1], cfg.limit_test, cfg.seed)
        test = (test[0][idx], test[1][idx])
    if cfg.val_split:
        tx, ty, vx, vy = split_train_val(tx, ty, cfg.val_split, seed=VAL_SEED)
        return Splits((tx, ty), (vx, vy), test, "Validation")
    return Splits((tx, ty), test, test, "Test")


@dataclass
class FitResult:
    """What `fit` returns: the history it wrote, the evaluated model and the final test numbers."""

    config: TrainConfig
    history: list[dict]
    model: nn.Module
    run_dir: Path
    final: dict = field(default_factory=dict)  # results.json (empty if interrupted)
    interrupted: bool = False
    data: Cifar10 | None = None
    exit_code: int = 0  # 130 after Ctrl-C, 143 after SIGTERM

    def test_predictions(self, tta: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(test images uint8, labels, probabilities) of the evaluated model on the run's test split, with the
        run's device and precision, and test-time augmentation `tta` (default: the run's final TTA)."""
        images, labels = make_splits(self.config, self.data).test
        probs, labels = predict_with_config(self.model, self.config, images, labels, tta=tta)
        return images, labels, probs


def predict_with_config(model: nn.Module, cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, *,
                        precision: str | None = None, tta: str | None = None,
                        batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict` on uint8 `images` on the model's device, with the run's precision, TTA, evaluation batch
    and layout unless overridden. Returns (probabilities, labels) on the CPU."""
    device = next(model.parameters()).device
    loader = DeviceLoader(images, labels, batch_size or cfg.eval_batch_size, train=False, device=device,
                          channels_last=cfg.channels_last)
    amp, _ = choose_precision(precision or cfg.precision, device)
    return predict(model, loader, amp_dtype=amp, tta=tta or cfg.tta)


@dataclass
class _Run:
    """Everything one run holds while it trains (built by `_setup`)."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    precision_reason: str
    data: Cifar10
    splits: Splits
    model: nn.Module
    train_model: nn.Module
    loader: DeviceLoader
    eval_loader: DeviceLoader
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    ema: EMA | None
    lookahead: Lookahead | None
    history: list = field(default_factory=list)
    start_epoch: int = 0
    current_epoch: int = 0  # 0-based epoch in progress (for the interrupt message)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state(self, epoch: int) -> dict:
        return {"config": self.cfg.to_dict(), "model": self.model.state_dict(), "epoch": epoch,
                "history": self.history, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None, "rng": rng_state()}


def _load_data(cfg: TrainConfig, data: Cifar10 | None, saved_fingerprint: str) -> tuple[Cifar10, str]:
    """The run's data and its fingerprint; on resume, refuse a source that does not hold the images the run
    started with."""
    if data is None:
        try:
            data = load_cifar10(cfg.data, cfg.data_root, progress=cfg.progress)
        except DataError as e:
            if not saved_fingerprint:
                raise
            raise DataError(f"{e} (the run being resumed was trained on {cfg.data or 'torchvision CIFAR-10'}; "
                            "pass --data with that dataset)") from None
    found = fingerprint(data)  # hashes every image (~0.3 s for CIFAR-10): once per run
    if saved_fingerprint and found != saved_fingerprint:
        raise DataError(f"{data.source or 'the data'} is not the dataset this run started on (fingerprint "
                        f"{found}, run: {saved_fingerprint}); resume with the same --data")
    return data, found


def model_for_config(cfg: TrainConfig, train_images: torch.Tensor, device: torch.device, *,
                     from_data: bool = True) -> nn.Module:
    """The configured network on `device` in the config's memory layout. With `from_data`, a network that
    initialises itself from data (CompactNet's whitening conv) sees the first 5,000 training images (a
    resumed run loads those weights instead)."""
    model = build_model(cfg.model, cfg.dropout)
    if from_data and hasattr(model, "init_from_data"):
        model.init_from_data(normalize(train_images[:5000]))
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory)


def _setup(cfg: TrainConfig, data: Cifar10 | None, ckpt: dict | None) -> _Run:
    device = resolve_device(cfg.device)
    amp_dtype, reason = choose_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data, found = _load_data(cfg, data, cfg.data_fingerprint if ckpt is not None else "")
    cfg = dataclasses.replace(cfg, data_fingerprint=found)
    print(cfg)
    print(f"device: {device} ({hardware_string(device)}), precision: {reason}, torch {torch.__version__}")
    splits = make_splits(cfg, data)
    print(f"data: {len(splits.train[1])} train / {len(splits.eval[1])} {splits.eval_name.lower()} images "
          f"from {data.source or 'torchvision'}")

    if not isinstance(cfg.model, str):
        print(f"note: the network was passed as an object and is recorded as {cfg.model_name!r}; a fresh process "
              "(evaluate, export, --resume) can rebuild it only from an import path such as my_net.py:Net"
              if cfg.model_name.startswith("object:") else
              f"note: the network was passed as an object; a fresh process rebuilds it as {cfg.model_name}() "
              "(give an import path with arguments if it needs any)")
    model = model_for_config(cfg, splits.train[0], device, from_data=ckpt is None)
    print(f"model: {cfg.model_name}, {count_parameters(model):,} parameters")
    loader = DeviceLoader.from_config(*splits.train, cfg, train=True, device=device)
    eval_loader = DeviceLoader.from_config(*splits.eval, cfg, train=False, device=device)
    optimizer = make_optimizer(model, cfg)
    return _Run(cfg, Path(cfg.out), device, amp_dtype, reason, data, splits, model,
                prepare_train_model(model, device=device, cuda_graphs=cfg.cuda_graphs, compile=cfg.compile),
                loader, eval_loader, optimizer, make_scheduler(optimizer, cfg, len(loader)),
                make_grad_scaler(amp_dtype, device), EMA(model, cfg.ema) if cfg.ema > 0 else None,
                Lookahead(cfg.epochs * len(loader)) if cfg.lookahead else None)


def _restore(run: _Run, ckpt: dict, path) -> None:
    load_weights(run.model, ckpt["model"], path, run.cfg.model_name)
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if run.ema is not None:
            run.ema.load_state_dict(ckpt["ema"])
        if run.lookahead is not None:
            run.lookahead.load_state_dict(ckpt["lookahead"])
        if run.scaler is not None and ckpt.get("scaler"):
            run.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path} cannot be resumed: {type(e).__name__}: {e}") from None
    run.history, run.start_epoch = list(ckpt.get("history", [])), int(ckpt["epoch"])
    run.current_epoch = run.start_epoch
    print(f"resuming {path} after epoch {run.start_epoch}/{run.cfg.epochs}")


def _train_loop(run: _Run, stop: StopSignals) -> None:
    """Epochs 1..N: train, evaluate single-view, then (inside a critical section) checkpoint and history."""
    cfg, history = run.cfg, run.history
    best = max((h["eval_accuracy"] for h in history), default=-1.0)
    for epoch in range(run.start_epoch, cfg.epochs):  # 0-based here; every printed or saved epoch is 1-based
        run.current_epoch = epoch
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout RNG depends only on (seed, epoch)
        run.loader.set_epoch(epoch)
        if cfg.progress:
            print(f"EPOCH: {epoch + 1}")
        tr = train_one_epoch(run.train_model, run.loader, run.optimizer, run.scheduler, amp_dtype=run.amp_dtype,
                             scaler=run.scaler, label_smoothing=cfg.label_smoothing, ema=run.ema or run.lookahead,
                             epoch=epoch, progress=cfg.progress, check_every=cfg.check_every)
        if run.lookahead is not None:
            run.lookahead.sync(run.model)
        ev = evaluate(run.eval_model, run.eval_loader, amp_dtype=run.amp_dtype, tta="none", verbose=cfg.progress,
                      label=run.splits.eval_name)
        row = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"], "eval_correct": ev["correct"],
               "eval_total": ev["total"], "eval_tta": "none", "lr": tr["lr"], "train_seconds": tr["seconds"],
               "eval_seconds": ev["seconds"], "images_per_second": tr["images_per_second"], "lrs": tr["lrs"]}
        if not cfg.progress:  # one line per epoch for logs
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {tr['loss']:.4f} acc {tr['accuracy']:.2f}% | "
                  f"{run.splits.eval_name.lower()} loss {ev['loss']:.4f} acc {ev['accuracy']:.2f}% | "
                  f"{tr['seconds']:.1f} s + {ev['seconds']:.1f} s", flush=True)
        # Checkpoint first, history files second, both inside a critical section: a signal waits until they
        # are written, and a kill at any moment leaves every epoch the history shows resumable from last.pt.
        with stop.critical():
            history.append(row)
            save_checkpoint(run.run_dir / "last.pt", run.state(epoch + 1))
            if ev["accuracy"] > best:  # single-view against single-view: like with like
                best = ev["accuracy"]
                save_checkpoint(run.run_dir / "best.pt", run.state(epoch + 1))
            write_history(run.run_dir, history)


def _final_results(run: _Run, wall_start: float) -> dict:
    """The final test: single view (the last epoch's line when it was the test set) and, separately, TTA."""
    cfg, history, last = run.cfg, run.history, run.history[-1]
    test_loader = run.eval_loader
    if run.splits.eval_name == "Test":
        single = {"loss": last["eval_loss"], "accuracy": last["eval_accuracy"], "correct": last["eval_correct"],
                  "total": last["eval_total"]}
    else:
        test_loader = DeviceLoader.from_config(*run.splits.test, cfg, train=False, device=run.device)
        single = evaluate(run.eval_model, test_loader, amp_dtype=run.amp_dtype, tta="none", verbose=False)
        print(f"Final test, single view: Accuracy: {single['correct']}/{single['total']} ({single['accuracy']:.2f}%)")
    results = {
        "model": cfg.model_name, "parameters": count_parameters(run.model), "epochs": len(history),
        "test_total": single["total"], "single_view_accuracy": single["accuracy"],
        "single_view_correct": single["correct"], "single_view_loss": single["loss"],
        "tta": cfg.tta, "tta_accuracy": None, "tta_correct": None, "tta_loss": None,
        "best_eval_accuracy": max(h["eval_accuracy"] for h in history),
        "best_eval_epoch": max(history, key=lambda h: h["eval_accuracy"])["epoch"],
        "eval_set": run.splits.eval_name.lower(), "weights": "ema" if run.ema is not None else "model"}
    if cfg.tta != "none" and run.splits.eval_name == "Validation":  # what recipe sweeps compare, TTA included
        v = evaluate(run.eval_model, run.eval_loader, amp_dtype=run.amp_dtype, tta=cfg.tta, verbose=False)
        results["eval_tta_accuracy"] = v["accuracy"]
        print(f"Final validation, {cfg.tta} TTA ({TTA_VIEWS[cfg.tta]} views): Accuracy: {v['correct']}/{v['total']} "
              f"({v['accuracy']:.2f}%)")
    if cfg.tta != "none":
        t = evaluate(run.eval_model, test_loader, amp_dtype=run.amp_dtype, tta=cfg.tta, verbose=False)
        results.update(tta_accuracy=t["accuracy"], tta_correct=t["correct"], tta_loss=t["loss"])
        print(f"Final test, {cfg.tta} TTA ({TTA_VIEWS[cfg.tta]} views): Accuracy: {t['correct']}/{t['total']} "
              f"({t['accuracy']:.2f}%)")
    results.update({
        "wall_seconds": time.perf_counter() - wall_start, "train_seconds": sum(h["train_seconds"] for h in history),
        "hardware": hardware_string(run.device),
        "precision": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else "fp32",
        "precision_reason": run.precision_reason, "torch": torch.__version__, "peak_rss_mb": peak_rss_mb()})
    atomic_write_json(run.run_dir / "results.json", results)
    return results


def fit(cfg: TrainConfig, data: Cifar10 | None = None, resume: str | Path | None = None,
        overwrite: bool = False, model: nn.Module | object | None = None,
        explicit: set[str] | None = None) -> FitResult:
    """Train the configured network for `cfg.epochs`, writing the run folder; resume from a checkpoint if given.

    `model` (or `cfg.model`) may be any nn.Module or a zero-argument factory instead of a name; a module
    object is trained in place. On resume, `explicit` names the options the caller set on purpose (the CLI
    passes the ones given on its command line); see `resume_config`.
    Ctrl-C / SIGTERM stop at a safe point (never inside a checkpoint write) and return interrupted=True.
    A NaN / Inf loss raises engine.DivergenceError; the last good checkpoint stays in place.
    """
    if model is not None:
        cfg = dataclasses.replace(cfg, model=model)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if ckpt.get("resumable") is False:
            raise CheckpointError(f"{resume} is an exported checkpoint (weights only): it can be evaluated, "
                                  f"not resumed; resume from the run folder's last.pt")
        cfg = resume_config(config_from_checkpoint(ckpt, resume), cfg, explicit, resume)
    run_dir = Path(cfg.out)
    with StopSignals() as stop, RunLock(run_dir):  # one owner per folder, for the whole run
        state = check_run_dir(run_dir, overwrite) if ckpt is None else run_state(run_dir)  # under the lock
        if state == "finished" and ckpt is not None:
            raise RunDirError(f"{run_dir} holds a finished run ({len(ckpt.get('history', []))} of {cfg.epochs} "
                              "epochs and results.json): nothing to resume")
        ensure_writable(run_dir)  # a read-only --out fails now, with one line, not after an epoch
        run = None
        try:
            run = _setup(cfg, data, ckpt)  # nothing is written until the setup succeeded
            remove_temp_files(run_dir)
            if ckpt is not None:
                _restore(run, ckpt, resume)
            elif overwrite or state == "empty":
                clear_run_dir(run_dir)  # also the stale config / history of a run that never checkpointed
            atomic_write_json(run_dir / "config.json", run.cfg.to_dict())
            wall_start = time.perf_counter() - sum(h["train_seconds"] + h["eval_seconds"] for h in run.history)
            _train_loop(run, stop)
            try:
                with stop.critical():
                    final = _final_results(run, wall_start)
            except KeyboardInterrupt:  # the signal waited for results.json: the run is complete, report it so
                print("(interrupt received while the final results were written; the run is complete)",
                      file=sys.stderr)
        except KeyboardInterrupt as e:  # RunInterrupted (SIGINT / SIGTERM), or a plain one
            epoch = run.current_epoch + 1 if run is not None else None  # None: during the setup, no epoch yet
            print(interrupt_message(run_dir, getattr(e, "signum", signal.SIGINT), epoch), file=sys.stderr)
            if run is None:
                e.reported = True  # the CLI adds no second line
                raise
            return FitResult(run.cfg, run.history, run.eval_model, run_dir, interrupted=True, data=run.data,
                             exit_code=getattr(e, "exit_code", 130))
    return FitResult(run.cfg, run.history, run.eval_model, run_dir, final=final, data=run.data)
