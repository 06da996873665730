"""Give every committed run both final numbers: single view and test-time augmentation, measured
apart.

    python benchmarks/reevaluate_checkpoints.py --data ../shared/data/cifar10-jpg.tar.gz
    [checkpoints]

Runs trained before the two were separated evaluated their last epoch with TTA and stored it as an
ordinary epoch. For each checkpoints/NAME.pt this evaluates the saved weights on the test set twice
(single view, and the run's TTA), writes `single_view_*` / `tta_*` into NAME/results.json (dropping
the ambiguous `final_test_*` keys), and replaces a TTA last row of NAME/history.{json,csv} by its
single-view numbers, so every history row is single-view. The machine that did it is recorded as
`reevaluated_on`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cifarkit.atomic import atomic_write_json
from cifarkit.data.sources import load_cifar10
from cifarkit.hardware import hardware_string, resolve_device
from cifarkit.runfolder.checkpoint import model_from_checkpoint, recorded_precision
from cifarkit.runfolder.files import write_history
from cifarkit.training.evaluate import predict_images, score


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="checkpoints")
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    data = load_cifar10(args.data, progress=False)
    device = resolve_device("auto")
    for pt in sorted(Path(args.root).glob("*.pt")):
        folder = pt.with_suffix("")
        if not (folder / "results.json").is_file():
            continue
        model, cfg, ckpt = model_from_checkpoint(pt, device)
        if cfg.val_split or cfg.limit_test:
            print(f"{pt.name}: skipped (not evaluated on the full test set)")
            continue
        x, y = data.test_images, data.test_labels

        precision = recorded_precision(ckpt) or cfg.precision  # the run's record first

        def evaluated(tta: str) -> dict:
            probs, labels = predict_images(
                model, x, y, precision=precision, tta=tta, batch_size=cfg.eval_batch_size
            )
            return score(probs, labels, verbose=False)

        single = evaluated("none")
        tta = evaluated(cfg.tta) if cfg.tta != "none" else None
        res = json.loads((folder / "results.json").read_text())
        old = res.get(
            "final_test_correct",
            res.get("tta_correct" if cfg.tta != "none" else "single_view_correct"),
        )
        for k in (
            "final_test_accuracy",
            "final_test_correct",
            "final_test_total",
            "final_test_loss",
        ):
            res.pop(k, None)
        res.update(
            test_total=single["total"],
            single_view_accuracy=single["accuracy"],
            single_view_correct=single["correct"],
            single_view_loss=single["loss"],
            tta=cfg.tta,
            tta_accuracy=tta and tta["accuracy"],
            tta_correct=tta and tta["correct"],
            tta_loss=tta and tta["loss"],
            reevaluated_on=hardware_string(device),
        )
        history = json.loads((folder / "history.json").read_text())
        last = history[-1]
        if last.get("eval_tta", "none") not in (None, "none") or (
            cfg.tta != "none" and "eval_tta" not in last
        ):
            last.update(
                eval_loss=single["loss"],
                eval_accuracy=single["accuracy"],
                eval_correct=single["correct"],
                eval_total=single["total"],
                eval_tta="none",
            )
            write_history(folder, history)
        best = max(history, key=lambda h: h["eval_accuracy"])
        res.update(best_eval_accuracy=best["eval_accuracy"], best_eval_epoch=best["epoch"])
        atomic_write_json(folder / "results.json", res)
        print(
            f"{pt.name}: recorded {old}, now single view {single['correct']}/{single['total']}"
            + (f", {cfg.tta} TTA {tta['correct']}/{tta['total']}" if tta else ""),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
