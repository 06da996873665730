"""The run folder's files: their names, and the history written as CSV and JSON.

Every run file (checkpoints, history, config, results) is written through `atomic.atomic_write`, so
a failed write (full disk, read-only mount, no permission) is one line naming the file, and the
previous version of that file stays intact. Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..atomic import atomic_write_json, atomic_write_text

# The files of a run folder (``config.out``). The TrainConfig (with the data fingerprint),
# written before the first epoch
CONFIG = "config.json"
# one row per epoch (scalars, single-view evaluation), rewritten after every epoch
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"  # the same plus per-step learning rates, for the plots
# model, averager, optimizer, scheduler, epoch, history, RNG states: resume here
LAST = "last.pt"
BEST = "best.pt"  # the epoch with the best single-view evaluation accuracy
# written when the run finishes: final single-view and TTA test results
RESULTS = "results.json"
# exists while a process owns the folder (its lock dies with the process)
LOCK = ".lock"
RUN_FILES = (CONFIG, HISTORY_CSV, HISTORY_JSON, LAST, BEST, RESULTS)  # what --overwrite removes
CSV_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "eval_loss",
    "eval_accuracy",
    "lr",
    "train_seconds",
    "eval_seconds",
    "images_per_second",
)


def write_history(run_dir: Path, history: list[dict]) -> None:
    """history.csv (the scalar columns) and history.json (every key, per-step LRs included),
    atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(Path(run_dir) / HISTORY_CSV, buf.getvalue())
    atomic_write_json(Path(run_dir) / HISTORY_JSON, history)


def started_in(found_in: str | os.PathLike, out: str) -> Path | None:
    """The folder a run was started in (its working directory then), from the folder its files are
    in now and the `out` it recorded: out "runs/mine" found at /x/y/runs/mine was started in /x/y.
    None when that folder does not end with `out` (a copied or exported run, an absolute out)."""
    parts = Path(os.path.normpath(out)).parts
    found = Path(os.path.abspath(found_in))
    if Path(out).is_absolute() or ".." in parts or parts == (".",) or not parts:
        return None
    return found.parents[len(parts) - 1] if found.parts[-len(parts) :] == parts else None


def rebase_paths(saved: dict, found_in: str | os.PathLike) -> dict:
    """A saved config (its dict) with its relative paths (the model's .py file, data, data_root)
    usable from the working directory: each is kept when it exists from here, and taken from the
    folder the run was started in (`started_in`) when it exists only there. A config keeps its
    paths relative to where the run started (`base.portable_path`); this is how a fresh process in
    another folder (evaluate, export, --resume, check-notebook --verify) finds them again."""
    start = started_in(found_in, str(saved.get("out") or ""))
    if start is None or start == Path(os.path.abspath(os.getcwd())):
        return saved

    def here(path: str) -> str:  # TrainConfig makes it relative again where it can be
        if os.path.isabs(path) or os.path.exists(path) or not (start / path).exists():
            return path
        return str(start / path)

    out = dict(saved)
    for name in ("data", "data_root"):
        if isinstance(out.get(name), str):
            out[name] = here(out[name])
    where, sep, call = str(out.get("model", "")).rpartition(":")
    if sep and where.endswith(".py"):
        out["model"] = f"{here(where)}:{call}"
    return out
