"""`fit(config)`: the whole run. Owns the history and the run folder (its files: `runfolder.files`);
`build.build_run` makes the run, `step` does the steps.

`fit` reads as: decide what to resume (`_what_to_resume`), then under the folder's lock and the stop
signals: build the run, `_restore` a checkpoint's state, `_train_loop` (epochs, checkpoints) and
`_final_results` (the separate final test).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_write_json
from ..base import ConfigError
from ..config import TrainConfig
from ..data.dataset import Cifar10
from ..data.loader import DeviceLoader
from ..hardware import peak_rss_mb
from ..models import count_parameters, spec_string
from ..models.registry import ObjectCopies
from ..report import epoch_line, result_line
from ..runfolder.checkpoint import (
    CheckpointError,
    config_from_checkpoint,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ..runfolder.files import BEST, CONFIG, LAST, RESULTS, write_history
from ..runfolder.lock import RunDirError, RunLock
from ..runfolder.resume import auto_resume, check_same_network, network_now, resume_config
from ..runfolder.signals import RunStopped, StopSignals
from ..runfolder.state import (
    check_run_dir,
    clear_run_dir,
    ensure_writable,
    interrupt_message,
    remove_temp_files,
    run_state,
)
from .build import Run, build_run
from .evaluate import evaluate
from .result import FitResult, load_finished
from .step import BatchFn, LossFn, train_one_epoch


@dataclass
class Caller:
    """Who started the run, for what only the command line needs (`cli.py` builds one)."""

    # "cli": messages name command-line flags, not fit's arguments
    speak: str = "python"
    # on resume: the options given on purpose (see `resume_config`)
    explicit: set[str] | None = None
    # a lock already held on the run folder (taken before torch loads)
    lock: RunLock | None = None


def _checkpoint(run: Run, epoch: int) -> dict:
    """What last.pt / best.pt hold (the "ema" / "lookahead" entry is the averager's, None without
    one)."""
    step, kind = run.step, run.averager.key if run.averager is not None else None
    return {
        "config": run.cfg.to_dict(),
        "network": run.identity,
        "choices": run.runtime.to_dict(),
        "model": run.model.state_dict(),
        "epoch": epoch,
        "history": run.history,
        "optimizer": step.optimizer.state_dict(),
        "scheduler": step.scheduler.state_dict(),
        **{key: run.averager.state_dict() if key == kind else None for key in ("ema", "lookahead")},
        "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else None,
        "rng": rng_state(),
    }


def _restore(run: Run, ckpt: dict, path) -> None:
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


def _train_loop(run: Run, run_dir: Path, stop: StopSignals) -> None:
    """Epochs 1..N: train, evaluate single-view, then (inside a critical section) checkpoint and
    history."""
    cfg, history = run.cfg, run.history
    best = max((h["eval_accuracy"] for h in history), default=-1.0)
    # 0-based here; every printed or saved epoch is 1-based
    for epoch in range(run.start_epoch, cfg.epochs):
        run.current_epoch = epoch
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout RNG depends only on (seed, epoch)
        run.loader.set_epoch(epoch)
        if cfg.progress:
            print(f"EPOCH: {epoch + 1}")
        tr = train_one_epoch(
            run.step,
            run.loader,
            epoch=epoch,
            progress=cfg.progress,
            check_every=cfg.check_every,
            between_batches=stop.check,
        )
        if run.averager is not None:
            run.averager.end_epoch(run.model)
        ev = evaluate(
            run.eval_model,
            run.eval_loader,
            amp_dtype=run.amp_dtype,
            tta="none",
            verbose=cfg.progress,
            label=run.splits.eval_name,
        )
        # a Ctrl-C the network's own code swallowed (a bare except in its forward) stops here
        stop.check()
        row = {
            "epoch": epoch + 1,
            "train_loss": tr["loss"],
            "train_accuracy": tr["accuracy"],
            "eval_loss": ev["loss"],
            "eval_accuracy": ev["accuracy"],
            "eval_correct": ev["correct"],
            "eval_total": ev["total"],
            "eval_tta": "none",
            "lr": tr["lr"],
            "train_seconds": tr["seconds"],
            "eval_seconds": ev["seconds"],
            "images_per_second": tr["images_per_second"],
            "lrs": tr["lrs"],
        }
        if not cfg.progress:  # one line per epoch for logs
            print(epoch_line(row, cfg.epochs, run.splits.eval_name.lower()), flush=True)
        # Checkpoint first, history files second, both inside a critical section: a signal waits
        # until they are written, and a kill at any moment leaves every epoch the history shows
        # resumable from last.pt.
        with stop.critical():
            history.append(row)
            save_checkpoint(run_dir / LAST, _checkpoint(run, epoch + 1))
            if ev["accuracy"] > best:  # single-view against single-view: like with like
                best = ev["accuracy"]
                save_checkpoint(run_dir / BEST, _checkpoint(run, epoch + 1))
            write_history(run_dir, history)


def _final_results(run: Run, run_dir: Path, wall_start: float) -> dict:
    """The final test: single view (the last epoch's line when it was the test set) and, separately,
    TTA."""
    cfg, history, last = run.cfg, run.history, run.history[-1]
    test_loader = run.eval_loader
    if run.splits.eval_name == "Test":
        single = {
            "loss": last["eval_loss"],
            "accuracy": last["eval_accuracy"],
            "correct": last["eval_correct"],
            "total": last["eval_total"],
        }
    else:
        test_loader = DeviceLoader.from_config(
            *run.splits.test,
            cfg,
            train=False,
            device=run.device,
            channels_last=run.nhwc,
        )
        single = evaluate(
            run.eval_model, test_loader, amp_dtype=run.amp_dtype, tta="none", verbose=False
        )
        print(result_line("test", "none", single))
    results = {
        "model": cfg.model,
        "parameters": count_parameters(run.model),
        "epochs": len(history),
        "test_total": single["total"],
        "single_view_accuracy": single["accuracy"],
        "single_view_correct": single["correct"],
        "single_view_loss": single["loss"],
        "tta": cfg.tta,
        "tta_accuracy": None,
        "tta_correct": None,
        "tta_loss": None,
        "best_eval_accuracy": max(h["eval_accuracy"] for h in history),
        "best_eval_epoch": max(history, key=lambda h: h["eval_accuracy"])["epoch"],
        "eval_set": run.splits.eval_name.lower(),
        "weights": "ema" if run.averager is not None and run.averager.key == "ema" else "model",
        "layout": "channels_last" if run.nhwc else "NCHW",
        "seeded_init": run.seeded_init,
    }
    # what recipe sweeps compare, TTA included
    if cfg.tta != "none" and run.splits.eval_name == "Validation":
        v = evaluate(
            run.eval_model, run.eval_loader, amp_dtype=run.amp_dtype, tta=cfg.tta, verbose=False
        )
        results["eval_tta_accuracy"] = v["accuracy"]
        print(result_line("validation", cfg.tta, v))
    if cfg.tta != "none":
        t = evaluate(
            run.eval_model, test_loader, amp_dtype=run.amp_dtype, tta=cfg.tta, verbose=False
        )
        results.update(tta_accuracy=t["accuracy"], tta_correct=t["correct"], tta_loss=t["loss"])
        print(result_line("test", cfg.tta, t))
    results.update(
        {
            "wall_seconds": time.perf_counter() - wall_start,
            "train_seconds": sum(h["train_seconds"] for h in history),
            "hardware": run.runtime.hardware,
            "precision": run.runtime.precision,  # as config.json and checkpoints name it
            "precision_reason": run.runtime.reasons.get("precision", ""),
            "runtime": run.runtime.to_dict(),  # the whole decision: device, layout, determinism
            "torch": torch.__version__,
            "peak_rss_mb": peak_rss_mb(),
        }
    )
    atomic_write_json(run_dir / RESULTS, results)
    return results


def fit(
    cfg: TrainConfig,
    data: Cifar10 | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    model: nn.Module | object | None = None,
    batch_fn: BatchFn | None = None,
    loss_fn: LossFn | None = None,
    caller: Caller | None = None,
) -> FitResult:
    """Train the configured network for `cfg.epochs`, writing the run folder; resume from a
    checkpoint if given.

    resume="auto" (for notebooks: "Run all" again, or after a disconnect) looks at `cfg.out` first:
    an empty folder starts a run; an unfinished run with the same settings resumes from its last.pt;
    a finished one with the same settings is loaded and reported without training
    (FitResult.loaded); a run with other settings is refused in one line (pass overwrite=True, or
    set cfg.out to another folder), and so is a run trained by other network code
    (`models.identity`: what counts as a change), here and on `resume=PATH`. `model`: a network
    object (trained in place; its weights were drawn before `fit` seeded anything, so results.json
    records seeded_init false) or a zero-argument factory such as the class itself (called after
    seeding: reproducible from cfg.seed), used instead of `cfg.model`; the config records it as
    `models.spec_string` names it. `batch_fn(x, y) -> (x, y)` changes every training batch (MixUp,
    CutMix); `loss_fn(out, y) -> loss` replaces the label-smoothed cross-entropy and receives
    whatever the network returns in training mode (auxiliary outputs too: evaluation uses the
    eval-mode logits). Neither hook is recorded, so pass them again when resuming. `caller`: the
    command line's (`Caller`). Ctrl-C / SIGTERM / SIGHUP (a notebook's stop button) stop at a safe
    point (never inside a checkpoint write) and raise `RunStopped` (a KeyboardInterrupt: Run all
    stops there) holding the stopped run as `.result`; the command line gets interrupted=True. A
    NaN / Inf loss raises step.DivergenceError; the last good checkpoint stays in place.
    """
    caller = caller or Caller()
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(
            f"fit takes a TrainConfig first, got {type(cfg).__name__}: fit(ck.TrainConfig(...))"
        )
    if isinstance(data, (str, os.PathLike)):  # a path: loaded as TrainConfig(data=...) loads it
        cfg, data = dataclasses.replace(cfg, data=os.fspath(data)), None
    elif data is not None and not isinstance(data, Cifar10):
        raise ConfigError(
            f"data= takes the data ck.load_cifar10(PATH) returns, or a path; got"
            f" {type(data).__name__}: pass fit(cfg, data=ck.load_cifar10(PATH)) or set"
            " TrainConfig(data=PATH)"
        )
    if isinstance(model, ObjectCopies):  # the notebook's NETWORK = Net(): train a copy of it
        model = model()
    if model is not None:
        cfg = dataclasses.replace(cfg, model=spec_string(model))
    resume, ckpt, cfg = _what_to_resume(cfg, resume, overwrite, model, caller)
    if resume == "finished":
        if caller.lock is not None:
            caller.lock.release()
        return load_finished(cfg, data, model)
    run_dir = Path(cfg.out)
    if caller.lock is not None and caller.lock.run_dir.resolve() != run_dir.resolve():
        raise RunDirError(
            f"the lock given to fit is on {caller.lock.run_dir}, but the run writes {run_dir}"
        )
    with (
        StopSignals(exiting=caller.speak == "cli") as stop,
        caller.lock or RunLock(run_dir, caller.speak),
    ):
        state = (
            check_run_dir(run_dir, overwrite, caller.speak) if ckpt is None else run_state(run_dir)
        )
        if state == "finished" and ckpt is not None:
            raise RunDirError(
                f"{run_dir} holds a finished run ({len(ckpt.get('history', []))} of {cfg.epochs} "
                "epochs and results.json): nothing to resume"
            )
        ensure_writable(run_dir)  # a read-only --out fails now, with one line, not after an epoch
        run = None
        try:
            # writes nothing
            run = build_run(cfg, data, model=model, ckpt=ckpt, batch_fn=batch_fn, loss_fn=loss_fn)
            remove_temp_files(run_dir)
            if ckpt is not None:
                _restore(run, ckpt, resume)
            elif overwrite or state == "empty":
                # also the stale config / history of a run that never checkpointed
                clear_run_dir(run_dir)
            atomic_write_json(run_dir / CONFIG, run.cfg.to_dict())
            wall_start = time.perf_counter() - sum(
                h["train_seconds"] + h["eval_seconds"] for h in run.history
            )
            _train_loop(run, run_dir, stop)
            final = _final_results_once(run, run_dir, wall_start, stop)
        except KeyboardInterrupt as e:  # RunInterrupted (SIGINT / SIGTERM), or a plain one
            stop.delivered()  # from here on the run is stopping: later signals are not raised again
            # None: during the setup, no epoch yet
            epoch = run.current_epoch + 1 if run is not None else None
            message = interrupt_message(
                run_dir, getattr(e, "signum", signal.SIGINT), epoch, caller.speak
            )
            print(message, file=sys.stderr)
            if run is None:  # stopped while setting up: nothing to resume
                if caller.speak != "cli":
                    raise RunStopped(message, None, getattr(e, "exit_code", 130)) from None
                e.reported = True  # the CLI adds no second line
                raise
            stopped = _fit_result(
                run, run_dir, interrupted=True, exit_code=getattr(e, "exit_code", 130)
            )
            if caller.speak == "cli":
                return stopped  # the command line exits with its code
            # Python: stop the caller too (a notebook's Run all), the stopped run in the exception
            raise RunStopped(message, stopped, stopped.exit_code) from None
    return _fit_result(run, run_dir, final=final)


def _fit_result(run: Run, run_dir: Path, **kw) -> FitResult:
    """What `fit` returns for `run` (finished: `final`; stopped: `interrupted`, `exit_code`)."""
    return FitResult(
        run.cfg,
        run.history,
        run.eval_model,
        run_dir,
        data=run.data,
        runtime=run.runtime,
        **kw,
    )


def _what_to_resume(cfg: TrainConfig, resume, overwrite: bool, model, caller: Caller) -> tuple:
    """(what to resume: a checkpoint path, "finished" or None; its checkpoint or None; the config to
    run): `resume` resolved ("auto": from the run folder, `runfolder.resume.auto_resume`), the
    checkpoint read, the config merged with it (`resume_config`) and its network compared with
    `model`."""
    explicit_path = resume is not None and resume != "auto"
    if resume == "auto":
        resume = auto_resume(cfg, overwrite, lambda: network_now(cfg, model))
    if resume is None or resume == "finished":
        return resume, None, cfg
    ckpt = load_checkpoint(resume)
    if ckpt.get("resumable") is False:
        raise CheckpointError(
            f"{resume} is an exported checkpoint (weights only): it can be evaluated, "
            "not resumed; resume from the run folder's last.pt"
        )
    cfg = resume_config(config_from_checkpoint(ckpt, resume), cfg, caller.explicit, resume)
    if explicit_path:  # resume="auto" compared it already
        check_same_network(
            ckpt.get("network"), network_now(cfg, model), Path(resume).parent, caller.speak
        )
    return resume, ckpt, cfg


def _final_results_once(run: Run, run_dir: Path, wall_start: float, stop: StopSignals) -> dict:
    """`_final_results` inside a critical section; a signal that waited for results.json is
    reported."""
    final = {}
    try:
        with stop.critical():
            final = _final_results(run, run_dir, wall_start)
    # the signal waited for results.json: the run is complete, report it so
    except KeyboardInterrupt:
        stop.delivered()
        print(
            "(interrupt received while the final results were written; the run is complete)",
            file=sys.stderr,
        )
    return final
