"""Wall-clock seconds until a run's test accuracy first reaches given thresholds, read from its
history.

    python benchmarks/time_to_accuracy.py runs/NAME [--thresholds 80 85]

Time counts training and per-epoch evaluation, epoch by epoch, as fit recorded them in history.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def time_to_accuracy(
    history: list[dict], thresholds: list[float]
) -> dict[float, tuple[int, float] | None]:
    """threshold -> (epoch, cumulative seconds) of the first epoch at or above it; None if never
    reached."""
    found: dict[float, tuple[int, float] | None] = {t: None for t in thresholds}
    elapsed = 0.0
    for h in history:
        elapsed += h["train_seconds"] + h["eval_seconds"]
        for t in thresholds:
            if found[t] is None and h["eval_accuracy"] >= t:
                found[t] = (h["epoch"], elapsed)
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[80.0, 85.0])
    args = ap.parse_args()
    history = json.loads((args.run / "history.json").read_text())
    for t, hit in time_to_accuracy(history, args.thresholds).items():
        print(f"{t:.0f}%: " + (f"epoch {hit[0]}, {hit[1]:.0f} s" if hit else "not reached"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
