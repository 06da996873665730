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
import json
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, atomic_write_json, config_from_checkpoint, load_checkpoint, load_weights, \
    reported_weights, save_checkpoint
from .config import TTA_VIEWS, TrainConfig
from .data import Cifar10, DataError, balanced_indices, fingerprint, load_cifar10, split_train_val
from .engine import (EMA, Lookahead, choose_precision, evaluate, make_grad_scaler, make_optimizer, make_scheduler,
                     predict, prepare_train_model, resolve_device, train_one_epoch)
from .hardware import choose_channels_last, model_is_nhwc
from .loader import DeviceLoader, normalize
from .models import build_model, count_parameters
from .runstate import (CSV_COLUMNS, RUNTIME_FIELDS, config_differences, hardware_string, peak_rss_mb,  # noqa: F401
                       resume_config,
                       rng_state, set_rng_state, write_history)
from .rundir import (RunDirError, RunLock, StopSignals, advice, check_run_dir, clear_run_dir, ensure_writable,
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
    loaded: bool = False  # resume="auto" found this run finished and loaded it instead of training

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
                          channels_last=model_is_nhwc(model))
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
                     from_data: bool = True, verbose: bool = False) -> nn.Module:
    """The configured network on `device`, in the memory layout the config's `channels_last` picks (on a CPU,
    "auto" measures both layouts with this network: `hardware.choose_channels_last`; `verbose` prints the
    choice). With `from_data`, a network that initialises itself from data (CompactNet's whitening conv)
    sees the first 5,000 training images (a resumed run loads those weights instead)."""
    model = build_model(cfg.model, cfg.dropout)
    if from_data and hasattr(model, "init_from_data"):
        model.init_from_data(normalize(train_images[:5000]))
    model = model.to(device)
    amp_dtype = choose_precision(cfg.precision, device)[0]
    nhwc, why = choose_channels_last(cfg.channels_last, device, amp_dtype, model=model,
                                     batch=min(cfg.batch_size, 64))
    if verbose:
        print(f"layout: {why}")
    return model.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)


def _setup(cfg: TrainConfig, data: Cifar10 | None, ckpt: dict | None) -> _Run:
    device = resolve_device(cfg.device)
    amp_dtype, reason = choose_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data, found = _load_data(cfg, data, cfg.data_fingerprint if ckpt is not None else "")
    cfg = dataclasses.replace(cfg, data_fingerprint=found)
    print(cfg)
    print(f"device: {device} ({hardware_string(device)}), torch {torch.__version__}\nprecision: {reason}")
    splits = make_splits(cfg, data)
    print(f"data: {len(splits.train[1])} train / {len(splits.eval[1])} {splits.eval_name.lower()} images "
          f"from {data.source or 'torchvision'}")

    if not isinstance(cfg.model, str):
        print(f"note: the network was passed as an object and is recorded as {cfg.model_name!r}; a fresh process "
              "(evaluate, export, --resume) can rebuild it only from an import path such as my_net.py:Net"
              if cfg.model_name.startswith("object:") else
              f"note: the network was passed as an object; a fresh process rebuilds it as {cfg.model_name}() "
              "(give an import path with arguments if it needs any)")
    model = model_for_config(cfg, splits.train[0], device, from_data=ckpt is None, verbose=True)
    print(f"model: {cfg.model_name}, {count_parameters(model):,} parameters")
    nhwc = model_is_nhwc(model)  # the batches follow the model's layout
    loader = DeviceLoader.from_config(*splits.train, cfg, train=True, device=device, channels_last=nhwc)
    eval_loader = DeviceLoader.from_config(*splits.eval, cfg, train=False, device=device, channels_last=nhwc)
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
            print(epoch_line(row, cfg.epochs, run.splits.eval_name.lower()), flush=True)
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
        test_loader = DeviceLoader.from_config(*run.splits.test, cfg, train=False, device=run.device,
                                               channels_last=model_is_nhwc(run.model))
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
        explicit: set[str] | None = None, lock: RunLock | None = None, cli: bool = False) -> FitResult:
    """Train the configured network for `cfg.epochs`, writing the run folder; resume from a checkpoint if given.

    resume="auto" (for notebooks: "Run all" again, or after a disconnect) looks at `cfg.out` first: an empty
    folder starts a run; an unfinished run with the same settings resumes from its last.pt; a finished one
    with the same settings is loaded and reported without training (FitResult.loaded); a run with other
    settings is refused in one line (pass overwrite=True, or set cfg.out to another folder).
    `model` (or `cfg.model`) may be any nn.Module or a zero-argument factory instead of a name; a module
    object is trained in place. On resume, `explicit` names the options the caller set on purpose (the CLI
    passes the ones given on its command line); see `resume_config`. `lock`: a RunLock already held on
    the run folder (the CLI takes it before importing torch); `fit` releases it when it returns. `cli`:
    word the messages with command-line flags (the CLI sets it), not fit's arguments.
    Ctrl-C / SIGTERM stop at a safe point (never inside a checkpoint write) and return interrupted=True.
    A NaN / Inf loss raises engine.DivergenceError; the last good checkpoint stays in place.
    """
    if model is not None:
        cfg = dataclasses.replace(cfg, model=model)
    speak = "cli" if cli else "python"
    if resume == "auto":
        resume = _auto_resume(cfg, overwrite)
        if resume == "finished":
            if lock is not None:
                lock.release()
            return _load_finished(cfg, data)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if ckpt.get("resumable") is False:
            raise CheckpointError(f"{resume} is an exported checkpoint (weights only): it can be evaluated, "
                                  f"not resumed; resume from the run folder's last.pt")
        cfg = resume_config(config_from_checkpoint(ckpt, resume), cfg, explicit, resume)
    run_dir = Path(cfg.out)
    if lock is not None and lock.run_dir.resolve() != run_dir.resolve():
        raise RunDirError(f"the lock given to fit is on {lock.run_dir}, but the run writes {run_dir}")
    with StopSignals() as stop, (lock or RunLock(run_dir, speak)):  # one owner per folder, for the whole run
        state = check_run_dir(run_dir, overwrite, speak) if ckpt is None else run_state(run_dir)  # under the lock
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
            print(interrupt_message(run_dir, getattr(e, "signum", signal.SIGINT), epoch, speak), file=sys.stderr)
            if run is None:
                e.reported = True  # the CLI adds no second line
                raise
            return FitResult(run.cfg, run.history, run.eval_model, run_dir, interrupted=True, data=run.data,
                             exit_code=getattr(e, "exit_code", 130))
    return FitResult(run.cfg, run.history, run.eval_model, run_dir, final=final, data=run.data)


def _auto_resume(cfg: TrainConfig, overwrite: bool) -> str | Path | None:
    """resume="auto": None (start afresh), the last.pt to resume, or "finished" (load it); refuses a run with
    other settings in one line."""
    run_dir = Path(cfg.out)
    state = run_state(run_dir)
    if overwrite or state == "empty":
        return None
    if state == "finished":
        try:
            saved = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise RunDirError(f"{run_dir} holds a finished run whose config.json cannot be read ({e}); "
                              f"{advice('python', 'overwrite')} to train again, or {advice('python', 'out')}") from None
    else:
        saved = config_from_checkpoint(load_checkpoint(run_dir / "last.pt"), run_dir / "last.pt")
    diff = config_differences(saved, cfg)
    if diff:
        raise RunDirError(f"{run_dir} holds a{'n' if state == 'unfinished' else ''} {state} run with other settings "
                          f"({'; '.join(diff[:3])}); {advice('python', 'overwrite')} to replace it, or "
                          f"{advice('python', 'out')}")
    return "finished" if state == "finished" else run_dir / "last.pt"


def _load_finished(cfg: TrainConfig, data: Cifar10 | None) -> FitResult:
    """A finished run of `cfg` loaded from its folder, reported as `fit` reported it, with no training."""
    run_dir = Path(cfg.out)
    ckpt = load_checkpoint(run_dir / "last.pt")
    saved = config_from_checkpoint(ckpt, run_dir / "last.pt")
    final = json.loads((run_dir / "results.json").read_text())
    history = list(ckpt.get("history", []))
    run_cfg = dataclasses.replace(saved, model=cfg.model, out=cfg.out, progress=cfg.progress, device=cfg.device,
                                  data=cfg.data if cfg.data is not None else saved.data)
    data, _ = _load_data(run_cfg, data, saved.data_fingerprint)  # refuses other images
    device = resolve_device(run_cfg.device)
    model = model_for_config(run_cfg, data.train_images, device, from_data=False)
    load_weights(model, reported_weights(ckpt), run_dir / "last.pt", run_cfg.model_name)
    print(f"{run_dir} holds a finished run with these settings: loaded, not trained again "
          f"({advice('python', 'overwrite')} to train it again)")
    print(f"trained on {final.get('hardware')}, {final.get('precision')}, torch {final.get('torch')}; "
          f"{final.get('wall_seconds', 0) / 60:.1f} min")
    for h in history:
        print(epoch_line(h, len(history), "test" if final.get("eval_set") == "test" else "validation"))
    print(final_line(final))
    return FitResult(run_cfg, history, model.eval(), run_dir, final=final, data=data, loaded=True)


def epoch_line(h: dict, epochs: int, eval_name: str) -> str:
    """One epoch of the history as the one-line log prints it."""
    return (f"epoch {h['epoch']}/{epochs}: train loss {h['train_loss']:.4f} acc {h['train_accuracy']:.2f}% | "
            f"{eval_name} loss {h['eval_loss']:.4f} acc {h['eval_accuracy']:.2f}% | "
            f"{h['train_seconds']:.1f} s + {h['eval_seconds']:.1f} s")


def final_line(r: dict) -> str:
    """The final test result (results.json) in one line: single view, and TTA when the run used it."""
    tta = (f"; {r['tta']} TTA ({TTA_VIEWS[r['tta']]} views) {r['tta_correct']}/{r['test_total']} "
           f"({r['tta_accuracy']:.2f}%)" if r.get("tta_correct") is not None else "")
    return (f"final test accuracy: single view {r['single_view_correct']}/{r['test_total']} "
            f"({r['single_view_accuracy']:.2f}%){tta}; {r['epochs']} epoch{'s' * (r['epochs'] != 1)}")
