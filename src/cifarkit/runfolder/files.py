"""The run folder's files: their names, and the history written as CSV and JSON.

Every run file (checkpoints, history, config, results) is written through `atomic.atomic_write`, so
a failed write (full disk, read-only mount, no permission) is one line naming the file, and the
previous version of that file stays intact. Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
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
