"""`fit(config)`: the whole run. Owns the history and the run folder (its files: `runfolder.files`); the
engine does the steps.

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

from .compiled import prepare_train_model
from .config import TrainConfig
from .data.dataset import Cifar10
from .data.loader import DeviceLoader, normalize
from .data.splits import Splits, make_splits
from .engine import (BatchFn, LossFn, TrainStep, evaluate, model_for_config, precision_that_works,
                     train_one_epoch)
from .hardware import PRECISION_NAME, choose_precision, hardware_string, model_is_nhwc, peak_rss_mb, resolve_device
from .models import build_model, count_parameters, spec_string
from .models.registry import passed_object_notes
from .models.identity import network_identity
from .optim import Averager, make_averager, make_optimizer, make_scheduler
from .report import epoch_line, result_line
from .runfolder.checkpoint import (CheckpointError, config_from_checkpoint, load_checkpoint, load_weights,
                                   rng_state, save_checkpoint, set_rng_state)
from .runfolder.files import BEST, CONFIG, LAST, RESULTS, atomic_write_json, write_history
from .runfolder.lock import RunDirError, RunLock
from .runs import FitResult, load_finished, load_run_data
from .runfolder.resume import auto_resume, check_same_network, network_now, resume_config
from .runfolder.signals import StopSignals
from .runfolder.state import (check_run_dir, clear_run_dir, ensure_writable, interrupt_message,
                               remove_temp_files, run_state)


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
    loader: DeviceLoader
    eval_loader: DeviceLoader
    step: TrainStep
    averager: Averager | None
    history: list = field(default_factory=list)
    start_epoch: int = 0
    current_epoch: int = 0  # 0-based epoch in progress (for the interrupt message)
    seeded_init: bool = True  # False: a network object came with weights drawn before fit seeded anything
    identity: dict = field(default_factory=dict)  # the network's code (models.identity), saved in every checkpoint
    nhwc: bool = False        # the memory layout chosen when the run started; a resumed run keeps it

    @property
    def eval_model(self) -> nn.Module:
        return self.averager.eval_model(self.model) if self.averager is not None else self.model

    def state(self, epoch: int) -> dict:
        """What last.pt / best.pt hold (the "ema" / "lookahead" entry is the averager's, None without one)."""
        step, kind = self.step, self.averager.key if self.averager is not None else None
        choices = {"precision": PRECISION_NAME[self.amp_dtype], "channels_last": self.nhwc}  # what "auto" chose
        return {"config": self.cfg.to_dict(), "network": self.identity, "choices": choices,
                "model": self.model.state_dict(), "epoch": epoch, "history": self.history,
                "optimizer": step.optimizer.state_dict(),
                "scheduler": step.scheduler.state_dict(),
                **{key: self.averager.state_dict() if key == kind else None for key in ("ema", "lookahead")},
                "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else None, "rng": rng_state()}


def _setup(cfg: TrainConfig, data: Cifar10 | None, ckpt: dict | None, model: nn.Module | None, factory,
           batch_fn: BatchFn | None, loss_fn: LossFn | None) -> _Run:
    device = resolve_device(cfg.device)
    kept = (ckpt or {}).get("choices") or {}  # a resumed run computes as it started, whatever "auto" says now
    amp_dtype, reason = choose_precision(cfg.precision, device, kept=kept.get("precision"))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data, found = load_run_data(cfg, data, cfg.data_fingerprint if ckpt is not None else "",
                                trained_on=ckpt["config"].get("data") if ckpt is not None else None)
    cfg = dataclasses.replace(cfg, data_fingerprint=found)
    print(cfg)
    print(f"device: {device} ({hardware_string(device)}), torch {torch.__version__}\nprecision: {reason}")
    splits = make_splits(cfg, data)
    print(f"data: {len(splits.train[1])} train / {len(splits.eval[1])} {splits.eval_name.lower()} images "
          f"from {data.source or 'torchvision'}")
    for line in passed_object_notes(cfg.model, model, factory, resumed=ckpt is not None):
        print(line)
    if factory is not None:
        model = build_model(factory, cfg.dropout)  # after seeding: its initial weights follow cfg.seed
    net = model_for_config(cfg, splits.train[0], device, model=model, from_data=ckpt is None, verbose=True,
                           layout=kept.get("channels_last"))
    if cfg.precision == "auto" and "precision" not in kept:  # only among the precisions the network runs in
        amp_dtype, reason = precision_that_works(net, normalize(splits.train[0][:8].to(device), model_is_nhwc(net)),
                                                 device, amp_dtype, reason)
    print(f"model: {cfg.model}, {count_parameters(net):,} parameters")
    nhwc = model_is_nhwc(net)  # the batches follow the model's layout
    loader = DeviceLoader.from_config(*splits.train, cfg, train=True, device=device, channels_last=nhwc)
    eval_loader = DeviceLoader.from_config(*splits.eval, cfg, train=False, device=device, channels_last=nhwc)
    optimizer = make_optimizer(net, cfg)
    averager = make_averager(cfg, net, cfg.epochs * len(loader))
    step = TrainStep(prepare_train_model(net, device=device, cuda_graphs=cfg.cuda_graphs, compile=cfg.compile),
                     optimizer, amp_dtype, cfg.label_smoothing, make_scheduler(optimizer, cfg, len(loader)),
                     averager, batch_fn, loss_fn)
    return _Run(cfg, Path(cfg.out), device, amp_dtype, reason, data, splits, net, loader, eval_loader, step, averager,
                seeded_init=factory is not None or model is None or ckpt is not None,
                identity=network_identity(net, cfg.model), nhwc=nhwc)


def _restore(run: _Run, ckpt: dict, path) -> None:
    load_weights(run.model, ckpt["model"], path, run.cfg.model)
    try:
        run.step.optimizer.load_state_dict(ckpt["optimizer"])
        run.step.scheduler.load_state_dict(ckpt["scheduler"])
        if run.averager is not None:
            run.averager.load_state_dict(ckpt[run.averager.key])
        if ckpt.get("scaler"):
            run.step.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as e:
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
        tr = train_one_epoch(run.step, run.loader, epoch=epoch, progress=cfg.progress, check_every=cfg.check_every,
                             between_batches=stop.check)
        if run.averager is not None:
            run.averager.end_epoch(run.model)
        ev = evaluate(run.eval_model, run.eval_loader, amp_dtype=run.amp_dtype, tta="none", verbose=cfg.progress,
                      label=run.splits.eval_name)
        stop.check()  # a Ctrl-C the network's own code swallowed (a bare except in its forward) stops here
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
            save_checkpoint(run.run_dir / LAST, run.state(epoch + 1))
            if ev["accuracy"] > best:  # single-view against single-view: like with like
                best = ev["accuracy"]
                save_checkpoint(run.run_dir / BEST, run.state(epoch + 1))
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
        print(result_line("test", "none", single))
    results = {
        "model": cfg.model, "parameters": count_parameters(run.model), "epochs": len(history),
        "test_total": single["total"], "single_view_accuracy": single["accuracy"],
        "single_view_correct": single["correct"], "single_view_loss": single["loss"],
        "tta": cfg.tta, "tta_accuracy": None, "tta_correct": None, "tta_loss": None,
        "best_eval_accuracy": max(h["eval_accuracy"] for h in history),
        "best_eval_epoch": max(history, key=lambda h: h["eval_accuracy"])["epoch"],
        "eval_set": run.splits.eval_name.lower(),
        "weights": "ema" if run.averager is not None and run.averager.key == "ema" else "model",
        "layout": "channels_last" if run.nhwc else "NCHW",
        "seeded_init": run.seeded_init}
    if cfg.tta != "none" and run.splits.eval_name == "Validation":  # what recipe sweeps compare, TTA included
        v = evaluate(run.eval_model, run.eval_loader, amp_dtype=run.amp_dtype, tta=cfg.tta, verbose=False)
        results["eval_tta_accuracy"] = v["accuracy"]
        print(result_line("validation", cfg.tta, v))
    if cfg.tta != "none":
        t = evaluate(run.eval_model, test_loader, amp_dtype=run.amp_dtype, tta=cfg.tta, verbose=False)
        results.update(tta_accuracy=t["accuracy"], tta_correct=t["correct"], tta_loss=t["loss"])
        print(result_line("test", cfg.tta, t))
    results.update({
        "wall_seconds": time.perf_counter() - wall_start, "train_seconds": sum(h["train_seconds"] for h in history),
        "hardware": hardware_string(run.device),
        "precision": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else "fp32",
        "precision_reason": run.precision_reason, "torch": torch.__version__, "peak_rss_mb": peak_rss_mb()})
    atomic_write_json(run.run_dir / RESULTS, results)
    return results


def fit(cfg: TrainConfig, data: Cifar10 | None = None, resume: str | Path | None = None,
        overwrite: bool = False, model: nn.Module | object | None = None, batch_fn: BatchFn | None = None,
        loss_fn: LossFn | None = None, explicit: set[str] | None = None, lock: RunLock | None = None,
        cli: bool = False) -> FitResult:
    """Train the configured network for `cfg.epochs`, writing the run folder; resume from a checkpoint if given.

    resume="auto" (for notebooks: "Run all" again, or after a disconnect) looks at `cfg.out` first: an empty
    folder starts a run; an unfinished run with the same settings resumes from its last.pt; a finished one
    with the same settings is loaded and reported without training (FitResult.loaded); a run with other
    settings is refused in one line (pass overwrite=True, or set cfg.out to another folder), and so is a run
    trained by other network code (`models.identity`: what counts as a change), here and on `resume=PATH`.
    `model`: a network object (trained in place; its weights were drawn before `fit` seeded anything, so
    results.json records seeded_init false) or a zero-argument factory such as the class itself (called
    after seeding: reproducible from cfg.seed), used instead of `cfg.model`; the config records it as
    `models.spec_string` names it. `batch_fn(x, y) -> (x, y)` changes every training batch (MixUp, CutMix);
    `loss_fn(out, y) -> loss` replaces the label-smoothed cross-entropy and receives whatever the network
    returns in training mode (auxiliary outputs too: evaluation uses the eval-mode logits). Neither hook is
    recorded, so pass them again when resuming. On resume, `explicit` names the options the
    caller set on purpose (the CLI passes the ones given on its command line); see `resume_config`.
    `lock`: a RunLock already held on the run folder (the CLI takes it before importing torch); `fit`
    releases it when it returns. `cli`: word the messages with command-line flags, not fit's arguments.
    Ctrl-C / SIGTERM stop at a safe point (never inside a checkpoint write) and return interrupted=True.
    A NaN / Inf loss raises engine.DivergenceError; the last good checkpoint stays in place.
    """
    factory = None
    if model is not None:
        cfg = dataclasses.replace(cfg, model=spec_string(model))
        if not isinstance(model, nn.Module):
            factory, model = model, None  # called in _setup, after seeding
    speak = "cli" if cli else "python"
    explicit_resume = resume is not None and resume != "auto"
    if resume == "auto":
        resume = auto_resume(cfg, overwrite, lambda: network_now(cfg, model if model is not None else factory))
        if resume == "finished":
            if lock is not None:
                lock.release()
            return load_finished(cfg, data, model if model is not None else factory)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if ckpt.get("resumable") is False:
            raise CheckpointError(f"{resume} is an exported checkpoint (weights only): it can be evaluated, "
                                  f"not resumed; resume from the run folder's last.pt")
        cfg = resume_config(config_from_checkpoint(ckpt, resume), cfg, explicit, resume)
        if explicit_resume:  # resume="auto" compared it already
            check_same_network(ckpt.get("network"), network_now(cfg, model if model is not None else factory), Path(resume).parent, speak)
    run_dir = Path(cfg.out)
    if lock is not None and lock.run_dir.resolve() != run_dir.resolve():
        raise RunDirError(f"the lock given to fit is on {lock.run_dir}, but the run writes {run_dir}")
    with StopSignals(exiting=cli) as stop, (lock or RunLock(run_dir, speak)):  # one owner per folder, for the whole run
        state = check_run_dir(run_dir, overwrite, speak) if ckpt is None else run_state(run_dir)  # under the lock
        if state == "finished" and ckpt is not None:
            raise RunDirError(f"{run_dir} holds a finished run ({len(ckpt.get('history', []))} of {cfg.epochs} "
                              "epochs and results.json): nothing to resume")
        ensure_writable(run_dir)  # a read-only --out fails now, with one line, not after an epoch
        run = None
        try:
            run = _setup(cfg, data, ckpt, model, factory, batch_fn, loss_fn)  # nothing is written until the setup succeeded
            remove_temp_files(run_dir)
            if ckpt is not None:
                _restore(run, ckpt, resume)
            elif overwrite or state == "empty":
                clear_run_dir(run_dir)  # also the stale config / history of a run that never checkpointed
            atomic_write_json(run_dir / CONFIG, run.cfg.to_dict())
            wall_start = time.perf_counter() - sum(h["train_seconds"] + h["eval_seconds"] for h in run.history)
            _train_loop(run, stop)
            try:
                with stop.critical():
                    final = _final_results(run, wall_start)
            except KeyboardInterrupt:  # the signal waited for results.json: the run is complete, report it so
                stop.delivered()
                print("(interrupt received while the final results were written; the run is complete)",
                      file=sys.stderr)
        except KeyboardInterrupt as e:  # RunInterrupted (SIGINT / SIGTERM), or a plain one
            stop.delivered()  # from here on the run is stopping: later signals are not raised again
            epoch = run.current_epoch + 1 if run is not None else None  # None: during the setup, no epoch yet
            print(interrupt_message(run_dir, getattr(e, "signum", signal.SIGINT), epoch, speak), file=sys.stderr)
            if run is None:
                e.reported = True  # the CLI adds no second line
                raise
            return FitResult(run.cfg, run.history, run.eval_model, run_dir, interrupted=True, data=run.data,
                             exit_code=getattr(e, "exit_code", 130))
    return FitResult(run.cfg, run.history, run.eval_model, run_dir, final=final, data=run.data)
