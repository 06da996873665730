"""`fit(config)`: the whole run. Owns the history and the run folder; the engine does the steps.

Run folder layout (``config.out``):
  config.json     the TrainConfig, written before the first epoch
  history.csv     one row per epoch (scalars), rewritten atomically after every epoch
  history.json    the same plus per-step learning rates, for the plots
  last.pt         model, EMA, optimizer, scheduler, epoch, history, RNG states: resume from here
  best.pt         the epoch with the best evaluation accuracy (validation if val_split > 0, else test)
  results.json    written when the run finishes: final test evaluation, wall time, hardware
"""
from __future__ import annotations

import csv
import io
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (CheckpointError, atomic_write_json, atomic_write_text, config_from_checkpoint,
                         load_checkpoint, load_weights, save_checkpoint)
from .config import CifarkitError, TrainConfig
from .data import Cifar10, balanced_indices, load_cifar10, split_train_val
from .engine import (EMA, Lookahead, evaluate, make_optimizer, make_scheduler, predict, resolve_device,
                     resolve_precision, train_one_epoch)
from .loader import DeviceLoader, normalize
from .models import count_parameters, create_model

VAL_SEED = 12345  # the validation split is the same for every training seed, so runs compare on it
RUN_FILES = ("config.json", "history.csv", "history.json", "last.pt", "best.pt", "results.json")
CSV_COLUMNS = ("epoch", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "lr", "train_seconds",
               "eval_seconds", "images_per_second")


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
    final: dict = field(default_factory=dict)  # final test evaluation (empty if interrupted)
    interrupted: bool = False
    data: Cifar10 | None = None

    def test_predictions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(test images uint8, labels, probabilities) of the evaluated model on the run's test split,
        with the run's device, precision and test-time augmentation."""
        images, labels = make_splits(self.config, self.data).test
        probs, labels = predict_with_config(self.model, self.config, images, labels)
        return images, labels, probs


def predict_with_config(model: nn.Module, cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, *,
                        precision: str | None = None, tta: str | None = None,
                        batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict` on uint8 `images` on the model's device, with the run's precision, TTA, evaluation batch
    and layout unless overridden. Returns (probabilities, labels) on the CPU."""
    device = next(model.parameters()).device
    loader = DeviceLoader(images, labels, batch_size or cfg.eval_batch_size, train=False, device=device,
                          channels_last=cfg.channels_last)
    amp = resolve_precision(precision or cfg.precision, device)
    return predict(model, loader, amp_dtype=amp, tta=tta or cfg.tta)


def hardware_string(device: torch.device) -> str:
    """A short description of the device, e.g. 'CPU: AMD EPYC (2 threads)' or 'GPU: NVIDIA H100'."""
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "GPU: Apple MPS"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {name} ({torch.get_num_threads()} threads)"


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB (None where the OS does not report it)."""
    try:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(kb / 1024 / (1024 if sys.platform == "darwin" else 1), 1)  # macOS reports bytes
    except (ImportError, OSError):
        return None


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to reuse a folder that holds a run, unless `overwrite` (then fit clears it once set up)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CifarkitError(f"--out {run_dir} is a file, not a folder")
    existing = [n for n in RUN_FILES if (run_dir / n).exists()]
    if existing and not overwrite:
        state = "a finished run" if (run_dir / "results.json").exists() else "an unfinished run"
        hint = "" if state == "a finished run" else f" (resume with --resume {run_dir / 'last.pt'})"
        raise CifarkitError(f"{run_dir} already holds {state}{hint}; pass --overwrite or choose another --out")


def write_history(run_dir: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())
    atomic_write_json(run_dir / "history.json", history)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(cfg: TrainConfig, data: Cifar10 | None = None, resume: str | Path | None = None,
        overwrite: bool = False) -> FitResult:
    """Train `cfg.model` for `cfg.epochs`, writing the run folder; resume from a checkpoint if given.

    Ctrl-C stops after the last completed epoch's checkpoint and returns with interrupted=True.
    A NaN / Inf loss raises engine.DivergenceError; the last good checkpoint stays in place.
    """
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if ckpt.get("resumable") is False:
            raise CheckpointError(f"{resume} is an exported checkpoint (weights only): it can be evaluated, "
                                  f"not resumed; resume from the run folder's last.pt")
        saved = config_from_checkpoint(ckpt, resume)
        keep = {k: getattr(cfg, k) for k in ("data", "data_root", "device", "progress", "compile")}
        cfg = TrainConfig.from_dict({**saved.to_dict(), **keep, "out": str(Path(resume).parent)})
    run_dir = Path(cfg.out)
    if ckpt is None:
        check_run_dir(run_dir, overwrite)  # refuse early; nothing is written until the setup succeeded

    device = resolve_device(cfg.device)
    amp_dtype = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    print(cfg)
    print(f"device: {device} ({hardware_string(device)}), precision: "
          f"{str(amp_dtype).replace('torch.', '') if amp_dtype else 'fp32'}, torch {torch.__version__}")
    if data is None:
        data = load_cifar10(cfg.data, cfg.data_root, progress=cfg.progress)
    splits = make_splits(cfg, data)
    print(f"data: {len(splits.train[1])} train / {len(splits.eval[1])} {splits.eval_name.lower()} images "
          f"from {data.source or 'torchvision'}")

    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = create_model(cfg.model, dropout=cfg.dropout)
    if hasattr(model, "init_from_data") and ckpt is None:  # e.g. CompactNet's whitening conv
        model.init_from_data(normalize(splits.train[0][:5000]))
    model = model.to(device, memory_format=memory)
    print(f"model: {cfg.model}, {count_parameters(model):,} parameters")
    loader = DeviceLoader(*splits.train, cfg.batch_size, train=True, device=device, crop_padding=cfg.crop_padding,
                          flip=cfg.flip, pad_mode=cfg.pad_mode, cutout=cfg.cutout, channels_last=cfg.channels_last,
                          seed=cfg.seed)
    eval_loader = DeviceLoader(*splits.eval, cfg.eval_batch_size, train=False, device=device,
                               channels_last=cfg.channels_last)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(loader))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    lookahead = Lookahead(cfg.epochs * len(loader)) if cfg.lookahead else None
    history, start_epoch = [], 0
    if ckpt is not None:
        load_weights(model, ckpt["model"], resume, cfg.model)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ema is not None:
                ema.load_state_dict(ckpt["ema"])
            if lookahead is not None:
                lookahead.load_state_dict(ckpt["lookahead"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{resume} cannot be resumed: {type(e).__name__}: {e}") from None
        history, start_epoch = list(ckpt.get("history", [])), int(ckpt["epoch"])
        print(f"resuming {resume} after epoch {start_epoch}/{cfg.epochs}")
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.tmp"):  # left by a process killed while writing; never a real file
        stale.unlink()
    if ckpt is None and overwrite:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    train_model = torch.compile(model) if cfg.compile else model
    eval_model = ema.module if ema is not None else model

    def state(epoch: int) -> dict:
        return {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": epoch, "history": history,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "lookahead": lookahead.state_dict() if lookahead is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state()}

    best = max((h["eval_accuracy"] for h in history), default=-1.0)
    wall_start = time.perf_counter() - sum(h["train_seconds"] + h["eval_seconds"] for h in history)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout RNG depends only on (seed, epoch)
            loader.set_epoch(epoch)
            if cfg.progress:
                print(f"EPOCH: {epoch}")
            tr = train_one_epoch(train_model, loader, optimizer, scheduler, amp_dtype=amp_dtype, scaler=scaler,
                                 label_smoothing=cfg.label_smoothing, ema=ema or lookahead, epoch=epoch,
                                 progress=cfg.progress)
            if lookahead is not None:
                lookahead.sync(model)
            # Test-time augmentation multiplies the evaluation cost, so only the final epoch pays for it.
            tta = cfg.tta if epoch == cfg.epochs - 1 else "none"
            ev = evaluate(eval_model, eval_loader, amp_dtype=amp_dtype, tta=tta, verbose=cfg.progress,
                          label=splits.eval_name)
            history.append({
                "epoch": epoch + 1, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                "eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"], "eval_correct": ev["correct"], "eval_tta": tta,
                "eval_total": ev["total"], "lr": tr["lr"], "train_seconds": tr["seconds"],
                "eval_seconds": ev["seconds"], "images_per_second": tr["images_per_second"], "lrs": tr["lrs"]})
            if not cfg.progress:  # one line per epoch for logs
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {tr['loss']:.4f} acc {tr['accuracy']:.2f}% | "
                      f"{splits.eval_name.lower()} loss {ev['loss']:.4f} acc {ev['accuracy']:.2f}% | "
                      f"{tr['seconds']:.1f} s + {ev['seconds']:.1f} s", flush=True)
            # Checkpoint first, history files second: whatever moment a kill hits, every epoch the history
            # files show can be resumed from last.pt (which carries the history itself).
            save_checkpoint(run_dir / "last.pt", state(epoch + 1))
            if ev["accuracy"] > best:
                best = ev["accuracy"]
                save_checkpoint(run_dir / "best.pt", state(epoch + 1))
            write_history(run_dir, history)
    except KeyboardInterrupt:
        done = len(history)
        where = (f"the checkpoint after epoch {done} is {run_dir / 'last.pt'}; resume with: "
                 f"python -m cifarkit train --resume {run_dir / 'last.pt'}") if done else "no epoch had finished"
        print(f"\nInterrupted during epoch {epoch + 1}: {where}")
        return FitResult(cfg, history, eval_model, run_dir, interrupted=True, data=data)

    if splits.eval_name == "Test":  # the last epoch's evaluation already was the test
        last = history[-1]
        final = {"loss": last["eval_loss"], "accuracy": last["eval_accuracy"], "correct": last["eval_correct"],
                 "total": last["eval_total"]}
    else:
        test_loader = DeviceLoader(*splits.test, cfg.eval_batch_size, train=False, device=device,
                                   channels_last=cfg.channels_last)
        final = evaluate(eval_model, test_loader, amp_dtype=amp_dtype, tta=cfg.tta, verbose=cfg.progress)
    results = {
        "model": cfg.model, "parameters": count_parameters(model), "epochs": len(history),
        "final_test_accuracy": final["accuracy"], "final_test_correct": final["correct"],
        "final_test_total": final["total"], "final_test_loss": final["loss"],
        "best_eval_accuracy": best, "eval_set": splits.eval_name.lower(), "tta": cfg.tta,
        "weights": "ema" if ema is not None else "model",
        "wall_seconds": time.perf_counter() - wall_start,
        "train_seconds": sum(h["train_seconds"] for h in history),
        "hardware": hardware_string(device), "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "torch": torch.__version__, "peak_rss_mb": peak_rss_mb(),
    }
    atomic_write_json(run_dir / "results.json", results)
    return FitResult(cfg, history, eval_model, run_dir, final=results, data=data)

