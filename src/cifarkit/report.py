"""How results are written for people: the per-epoch line, the final-test lines and the one-line
summary.

Every place that prints a result (training, loading a finished run, `evaluate`, the notebook) uses
these, so the same numbers always read the same way. Nothing here imports torch.
"""

from __future__ import annotations

from .base import TTA_VIEWS, plural


def view_name(tta: str) -> str:
    """'single view', or e.g. 'flip-translate TTA (6 views)'."""
    return "single view" if tta == "none" else f"{tta} TTA ({TTA_VIEWS[tta]} views)"


def result_line(split: str, tta: str, r: dict) -> str:
    """One evaluation as 'Final test, flip-translate TTA (6 views): Accuracy: 8838/10000 (88.38%)';
    `r` holds correct, total and accuracy (%), `split` is e.g. "test" or "validation"."""
    return (
        f"Final {split}, {view_name(tta)}: Accuracy: {r['correct']}/{r['total']}"
        f" ({r['accuracy']:.2f}%)"
    )


def epoch_line(h: dict, epochs: int, eval_name: str) -> str:
    """One epoch of the history as the one-line log prints it (with the test count, so a reader,
    the hand-in check included, sees exactly how many images were right)."""
    count = f"{h['eval_correct']}/{h['eval_total']} " if "eval_correct" in h else ""
    return (
        f"epoch {h['epoch']}/{epochs}: train loss {h['train_loss']:.4f} acc"
        f" {h['train_accuracy']:.2f}% | {eval_name} loss {h['eval_loss']:.4f} acc"
        f" {count}({h['eval_accuracy']:.2f}%) | {h['train_seconds']:.1f} s +"
        f" {h['eval_seconds']:.1f} s"
    )


def final_line(r: dict) -> str:
    """The final test result (results.json) in one line: single view, and TTA when the run used
    it."""
    tta = (
        f"; {view_name(r['tta'])} {r['tta_correct']}/{r['test_total']} ({r['tta_accuracy']:.2f}%)"
        if r.get("tta_correct") is not None
        else ""
    )
    return (
        f"final test accuracy: single view {r['single_view_correct']}/{r['test_total']} "
        f"({r['single_view_accuracy']:.2f}%){tta}; {plural(r['epochs'], 'epoch')}"
    )
