"""Record the class every committed checkpoint predicts for each test image, single view and TTA.

    python benchmarks/record_predictions.py --data ../shared/data/cifar10-jpg.tar.gz [NAME ...]

For each checkpoints/NAME.pt evaluated on the full test set, writes NAME/predictions.json: the
predicted class of each of the 10,000 test images (a string of digits, image i at position i),
single view and with the run's TTA, with the machine and precision that computed them. results.json
is not touched; the script prints both counts beside it.

Why: the integration test needs no full six-view TTA pass to check a committed number. It counts
the recorded predictions against the labels (the reported accuracy, from the whole test set, in
milliseconds) and re-evaluates the checkpoint on every 10th test image to check that it still makes
those predictions; the headline run keeps one full single-view re-evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cifarkit.atomic import atomic_write_json
from cifarkit.base import CifarkitError
from cifarkit.data.sources import load_cifar10
from cifarkit.hardware import PRECISION_NAME, choose_precision, hardware_string, resolve_device
from cifarkit.runfolder.checkpoint import model_from_checkpoint, recorded_precision
from cifarkit.training.evaluate import predict_images


def digits(probs: torch.Tensor) -> str:
    """Each row's predicted class (0-9) as one character."""
    return "".join(str(c) for c in probs.argmax(1).tolist())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="checkpoint names (default: every checkpoints/*.pt)")
    ap.add_argument("--root", default="checkpoints")
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    data = load_cifar10(args.data, progress=False)
    device = resolve_device("auto")
    root = Path(args.root)
    pts = [root / f"{n}.pt" for n in args.names] or sorted(root.glob("*.pt"))
    for pt in pts:
        folder = pt.with_suffix("")
        model, cfg, ckpt = model_from_checkpoint(pt, device)
        if cfg.val_split or cfg.limit_test or not (folder / "results.json").is_file():
            print(f"{pt.name}: skipped (no results on the full test set)")
            continue
        # the run's own precision (its runtime record), not "auto" decided again here
        precision = recorded_precision(ckpt) or cfg.precision
        amp, _ = choose_precision(precision, device)
        rec = {
            "test_total": len(data.test_labels),
            "recorded_on": hardware_string(device),
            "precision": PRECISION_NAME[amp],
            "torch": torch.__version__,
            "tta": cfg.tta,
        }
        views = [("single_view", "none")] + ([("tta", cfg.tta)] if cfg.tta != "none" else [])
        for key, tta in views:
            probs, labels = predict_images(
                model,
                data.test_images,
                data.test_labels,
                precision=precision,
                tta=tta,
                batch_size=cfg.eval_batch_size,
            )
            rec[f"{key}_predictions"] = digits(probs)
            rec[f"{key}_correct"] = int((probs.argmax(1) == labels).sum())
        atomic_write_json(folder / "predictions.json", rec)
        res = json.loads((folder / "results.json").read_text())
        print(
            f"{pt.name}: single view {rec['single_view_correct']} (results.json"
            f" {res.get('single_view_correct')}), {cfg.tta} TTA {rec.get('tta_correct')}"
            f" (results.json {res.get('tta_correct')}); {rec['precision']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CifarkitError as e:  # a missing checkpoint or data path, a damaged file: one line
        sys.exit(f"record_predictions.py: error: {e}")
