"""Written findings of a finished run, generated from its own numbers, so they stay true after a
re-run: which classes are confused with which (the single-view confusion matrix), what Grad-CAM
shows on the most confident mistakes (measured, not eyeballed), the six course-rule verdicts with
their numbers, and what to try next, chosen by rules stated in `_next_steps`.

`findings(...)` returns Markdown (a str that a notebook renders as Markdown when it is a cell's
value).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..base import plural
from .gradcam import find_target_layer, gradcam
from .metrics import confusion_matrix, misclassified, per_class_accuracy
from .rules import check_rules

# correlation of the two Grad-CAM maps above which both classes' evidence lies in one place
SAME_PLACE = 0.5
# the central 16x16 pixels of a 32x32 image, where a CIFAR-10 object mostly sits
CENTRE = slice(8, 24)


class Markdown(str):
    """Text that a notebook shows as Markdown (and `print` as plain text)."""

    def _repr_markdown_(self) -> str:
        return str(self)


def top_confusions(
    cm: torch.Tensor, classes: Sequence[str], k: int = 3
) -> list[tuple[str, str, int, float]]:
    """The k largest off-diagonal counts: (true class, predicted class, images, % of the true
    class)."""
    off = cm.clone()
    off.fill_diagonal_(0)
    flat = off.flatten().argsort(descending=True)[:k].tolist()
    n = len(classes)
    return [
        (
            classes[i // n],
            classes[i % n],
            int(off.flatten()[i]),
            100.0 * int(off.flatten()[i]) / max(1, int(cm[i // n].sum())),
        )
        for i in flat
        if off.flatten()[i] > 0
    ]


def gradcam_readings(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    indices: torch.Tensor,
    precision: str = "fp32",
) -> dict:
    """For the mistakes at `indices`: the correlation of each image's predicted-class and true-class
    maps, and the share of the predicted-class evidence inside the central 16x16 pixels."""
    picked = images[indices]
    layer = find_target_layer(model, picked)
    pred = gradcam(model, picked, probs[indices].argmax(1), layer, precision=precision)
    true = gradcam(model, picked, labels[indices], layer, precision=precision)
    a, b = pred.flatten(1), true.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)
    centre = pred[:, CENTRE, CENTRE].flatten(1).sum(1) / pred.flatten(1).sum(1).clamp_min(1e-8)
    return {"layer": layer, "correlation": corr.tolist(), "centre_share": centre.tolist()}


def findings(
    model: nn.Module,
    results: dict,
    history: Sequence[dict],
    images: torch.Tensor,
    labels: torch.Tensor,
    probs_single: torch.Tensor,
    probs_tta: torch.Tensor | None,
    classes: Sequence[str],
    *,
    k: int = 8,
    precision: str = "fp32",
    data_name: str = "CIFAR-10",
) -> Markdown:
    """The findings of a finished run, from its results.json (`results`), history, the trained
    `model` and its test predictions (single view, and with the run's TTA), as Markdown. Grad-CAM is
    read on the `k` most confident mistakes of the TTA predictions (the ones the notebook's figures
    show)."""
    cm = confusion_matrix(probs_single.argmax(1), labels, len(classes))
    errors = int(cm.sum() - cm.diag().sum())
    acc = per_class_accuracy(cm).tolist()
    order = sorted(range(len(classes)), key=acc.__getitem__)
    sv, total = results["single_view_accuracy"], results["test_total"]
    last = history[-1]
    gap = last["train_accuracy"] - last["eval_accuracy"]
    lines = [
        "### What this run shows",
        "",
        (
            "*Written by `ck.findings` from this run's numbers: re-run the notebook and it is"
            " rewritten.*"
        ),
        "",
        f"**Accuracy.** {sv:.2f}% single view ({results['single_view_correct']}/{total} test images"
        f" of {data_name}) after {plural(results['epochs'], 'epoch')}"
        + (
            f", {results['tta_accuracy']:.2f}% with {results['tta']} TTA"
            if results.get("tta_accuracy") is not None
            else ""
        )
        + f". The final epoch's training accuracy is {last['train_accuracy']:.2f}% (on augmented"
        f" images, so not strictly comparable): {abs(gap):.1f} points"
        f" {'above' if gap >= 0 else 'below'} the test accuracy"
        + (", so the network overfits little." if gap < 5 else ", a sign of overfitting."),
        "",
    ]
    conf = top_confusions(cm, classes)
    if conf:
        pairs = "; ".join(
            f"{t} taken for {p} {n} times ({share:.1f}% of the {t} images)"
            for t, p, n, share in conf
        )
        lines += [
            f"**Confusions** (single view, {errors} errors in all). The most frequent: {pairs}."
        ]
        t, p = conf[0][0], conf[0][1]
        back = int(cm[classes.index(p), classes.index(t)])
        if back:
            both = conf[0][2] + back
            lines[-1] += (
                f" {t} and {p} are confused both ways ({p} taken for {t} {back} times): {both}"
                f" images, {100 * both / max(1, errors):.0f}% of all errors."
            )
        lines += [
            "",
            (
                "**Classes.** Weakest:"
                f" {', '.join(f'{classes[i]} {acc[i]:.1f}%' for i in order[:3])}; strongest:"
                f" {', '.join(f'{classes[i]} {acc[i]:.1f}%' for i in order[::-1][:3])}."
            ),
            "",
        ]
    wrong = misclassified(probs_tta if probs_tta is not None else probs_single, labels, k=k)
    if len(wrong):
        g = gradcam_readings(
            model,
            images,
            labels,
            probs_tta if probs_tta is not None else probs_single,
            wrong,
            precision=precision,
        )
        same = sum(c > SAME_PLACE for c in g["correlation"])
        shares = [100 * v for v in g["centre_share"]]
        lines += [
            (
                f"**Grad-CAM on the {len(wrong)} most confident mistakes** (read at `{g['layer']}`,"
                f" measured on the maps). On {same} of {len(wrong)} the evidence for the wrong"
                " class lies where the evidence for the true class lies (the maps correlate above"
                f" {SAME_PLACE}); on {len(wrong) - same} it lies elsewhere. The central 16x16"
                f" pixels, a quarter of each image, hold {min(shares):.0f}-{max(shares):.0f}% of"
                " the wrong class's evidence (25% would be evidence spread evenly)."
            ),
            "",
        ]
    rules = check_rules(model, accuracy=sv, test_images=total)
    failed = sum(r.passed is False for r in rules)
    open_ = sum(r.passed is None for r in rules)
    verdicts = "; ".join(
        f"{r.rule}: {r.value} ({({True: 'pass', False: 'fail', None: 'undecided'})[r.passed]})"
        for r in rules
    )
    head = (
        "All six course rules pass"
        if not failed and not open_
        else (
            f"{failed} of the six course rules fail" + (f", {open_} undecided" if open_ else "")
            if failed
            else f"No course rule fails; {open_} undecided"
        )
    )
    lines += [f"**Conclusion.** {head}: {verdicts}.", ""]
    lines += [
        "**What to try next** (suggested from these numbers): "
        + " ".join(_next_steps(gap, conf, rules))
    ]
    return Markdown("\n".join(lines))


def _next_steps(gap: float, conf: list, rules) -> list[str]:
    """Rules of thumb, each tied to the number that triggers it."""
    steps = []
    if any(r.passed is False for r in rules):
        steps.append("First make the failing rules pass.")
    if gap < 5:
        steps.append(
            f"Train and test accuracy are {gap:.1f} points apart: the network is not overfitting,"
            " so more capacity (wider blocks) or more epochs should help before more"
            " regularisation."
        )
    else:
        steps.append(
            f"Train accuracy is {gap:.1f} points above test: add regularisation (cfg.cutout = 8, or"
            " dropout) before adding capacity."
        )
    if conf and {conf[0][0], conf[0][1]} <= {"cat", "dog", "deer", "horse", "bird"}:
        steps.append(
            f"The top confusion ({conf[0][0]} / {conf[0][1]}) is between animals of similar shape:"
            " fine detail decides it, which a wider last block sees better than a larger receptive"
            " field."
        )
    return steps
