"""Figures. Training plots read only the history that `fit` writes (a list of per-epoch dicts).

Every function returns the matplotlib Figure and, given `path`, also saves it as a PNG. In a
notebook each figure is shown once, where the code draws it (so two figures of one cell appear in
their order). Every figure is drawn to be read where a notebook shows it: at most NOTEBOOK_PX wide
at DISPLAY_DPI, so it is not scaled down, with text of at least 9 pt and colours that a colour-blind
reader tells apart (the Okabe-Ito palette, `COLORS`; viridis / Blues maps, never red against green
or jet).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..atomic import WriteError, atomic_write
from ..base import CifarkitError
from ..report import view_name

DISPLAY_DPI = 100  # pixels per inch of the PNG a notebook shows (and of the saved files' layout)
# the width (px) a notebook's output area shows an image at without scaling it down
NOTEBOOK_PX = 900
# Okabe & Ito's colour-blind-safe palette: blue, orange, bluish green, vermillion, sky blue, purple,
# yellow
COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442")


def _epoch_axis(ax, last: int) -> None:
    """Label the x axis "epoch": whole-number ticks that include the first and the last epoch, and
    the same range (0 to the last epoch) on every epoch plot, so the curves and the LR schedule line
    up."""
    step = 1 if last <= 12 else 5 if last <= 60 else 10
    ax.set_xticks(sorted({1, last, *range(step, last + 1, step)}))
    ax.set_xlim(0, last + 0.5)
    ax.set_xlabel("epoch")


class _NotebookFigure:
    """Mixed into the Figures this module returns, so that a notebook shows each one exactly once.

    With the inline backend, every figure still open when a cell ends is shown; a returned Figure
    that is the cell's value (no trailing ';') would be shown a second time. Here whichever comes
    first, the cell's value or the end-of-cell flush, shows the figure and closes it, so the other
    finds nothing.
    """

    def _ipython_display_(self):
        import io

        import matplotlib.pyplot as plt
        from IPython.display import Image, display

        if getattr(self, "_cifarkit_shown", False):
            return  # shown where it was drawn (see `finish`): the cell's value adds nothing
        self._cifarkit_shown = True
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight", dpi=DISPLAY_DPI)
        display(Image(buf.getvalue()))
        plt.close(self)


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (a notebook, Colab), where figures go to the output area."""
    import sys

    ipython = sys.modules.get("IPython")
    shell = (
        ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    )
    return shell is not None and getattr(shell, "kernel", None) is not None


def finish(fig, path: str | Path | None, tight: bool = True):
    """Lay out `fig`, save it to `path` (PNG) if given, and make it show exactly once in a
    notebook."""
    if tight:
        fig.tight_layout()
    if path is not None:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # PNG bytes at exactly `path` (no suffix added), through a temp file renamed over the
            # old figure: a full disk or a kill mid-save leaves the previous figure whole
            atomic_write(
                path, lambda f: fig.savefig(f, format="png", dpi=DISPLAY_DPI, bbox_inches="tight")
            )
        except (OSError, WriteError) as e:  # a read-only or full folder: one line, figure closed
            import matplotlib.pyplot as plt

            plt.close(fig)
            code = e.errno if isinstance(e, (OSError, WriteError)) else None
            why = os.strerror(code) if code else e
            raise CifarkitError(f"cannot save the figure {path}: {why}") from None
    if not isinstance(fig, _NotebookFigure):  # same object, shown once
        fig.__class__ = _SHOWN_ONCE.setdefault(
            type(fig), type("Figure", (_NotebookFigure, type(fig)), {})
        )
    if _in_kernel():
        fig._ipython_display_()  # now, in the order the code draws: not at the end of the cell
    return fig


_SHOWN_ONCE: dict[type, type] = {}  # Figure class -> its _NotebookFigure subclass


def plot_history(
    history: Sequence[dict],
    path: str | Path | None = None,
    eval_label: str = "test",
    title: str | None = None,
    final: dict | None = None,
    label_smoothing: float | None = None,
):
    """Loss and accuracy per epoch (1..N), train vs evaluation set, side by side.

    Every line is single-view. `final` (a results.json dict) adds the separate final
    test-time-augmented test accuracy as its own marked point; `label_smoothing` is noted on the
    loss plot (the train loss includes it, so it cannot fall to 0).
    """
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, name in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy (%)")):
        ax.plot(
            epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, color=COLORS[0], label="train"
        )
        ax.plot(
            epochs,
            [h[f"eval_{key}"] for h in history],
            "s--",
            ms=3,
            color=COLORS[1],
            label=f"{eval_label} (single view)",
        )
        _epoch_axis(ax, epochs[-1])
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if final and final.get("tta_accuracy") is not None:
        ax_acc.plot(
            [epochs[-1]],
            [final["tta_accuracy"]],
            "*",
            ms=13,
            color=COLORS[3],
            ls="none",
            label=f"final test, {view_name(final['tta'])}: {final['tta_accuracy']:.2f}%",
        )
    ax_loss.legend(fontsize=9.5)
    best = max(history, key=lambda h: h["eval_accuracy"])
    # The final single-view point is ringed and named in the legend: a label with an arrow would
    # cross the lines.
    ax_acc.plot(
        [epochs[-1]],
        [history[-1]["eval_accuracy"]],
        "o",
        ms=11,
        mfc="none",
        mec=COLORS[1],
        ls="none",
        label=(
            f"final {eval_label}, single view: {history[-1]['eval_accuracy']:.2f}% (epoch"
            f" {epochs[-1]})"
        ),
    )
    # below the axes: inside, it would hide part of the curves (an early dip of the test accuracy)
    ax_acc.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=9, frameon=False)
    ax_acc.set_title(
        f"best {eval_label} {best['eval_accuracy']:.2f}% at epoch {best['epoch']} (single view)",
        fontsize=10,
    )
    if label_smoothing:
        ax_loss.set_title(f"train loss includes label smoothing {label_smoothing:g}", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return finish(fig, path)


def load_baseline(name: str = "seed-recipe") -> list[dict]:
    """A history shipped with the package for comparison plots: "seed-recipe" is the original recipe
    (SGD 0.01, dropout 0.1, constant LR, no TTA) retrained here for 20 epochs
    (checkpoints/seed-recipe).
    """
    import json
    from importlib import resources

    try:
        text = resources.files("cifarkit").joinpath("baselines", f"{name}.json").read_text()
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        raise CifarkitError(f"no baseline history {name!r} in this cifarkit installation") from None
    return json.loads(text)


def plot_compare(
    histories: dict[str, Sequence[dict]],
    path: str | Path | None = None,
    reference: tuple[str, float, int] | None = None,
    title: str | None = None,
):
    """Evaluation accuracy per epoch of several runs on one axis (e.g. the original recipe vs ours).

    `reference` = (label, accuracy %, epoch): a single reported number (e.g. a write-up's final
    accuracy), drawn as one point at its epoch, not as a line across epochs it says nothing
    about."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, (name, history) in enumerate(histories.items()):
        ax.plot(
            [h["epoch"] for h in history],
            [h["eval_accuracy"] for h in history],
            "os^vD<>"[k % 7] + "-",
            ms=3.5,
            color=COLORS[k % len(COLORS)],
            label=f"{name}: {history[-1]['eval_accuracy']:.2f}% at epoch {history[-1]['epoch']}",
        )
    last = max(h["epoch"] for history in histories.values() for h in history)
    if reference:
        label, acc, epoch = reference
        ax.plot(
            [epoch],
            [acc],
            "D",
            ms=7,
            color="0.3",
            ls="none",
            label=f"{label}: {acc:.2f}% at epoch {epoch}",
        )
        last = max(last, epoch)
    _epoch_axis(ax, last)
    ax.set_ylabel("test accuracy (%), single view")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title(title or "test accuracy per epoch, single view", fontsize=10.5)
    return finish(fig, path)


def plot_lr(history: Sequence[dict], path: str | Path | None = None):
    """The learning rate at every optimiser step, on an epoch axis."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    xs, ys = [], []
    for h in history:
        lrs = h.get("lrs") or [h["lr"]]
        xs += [h["epoch"] - 1 + (i + 1) / len(lrs) for i in range(len(lrs))]
        ys += lrs
    ax.plot(xs, ys, color=COLORS[0])
    _epoch_axis(ax, history[-1]["epoch"])
    ax.set_ylabel("learning rate")
    ax.set_title(
        f"learning-rate schedule: {len(ys)} optimiser steps, each at its fraction of its epoch",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    return finish(fig, path)


def show_images(
    images: torch.Tensor,
    titles: Sequence[str],
    ncols: int = 6,
    path: str | Path | None = None,
    title: str | None = None,
    colors: Sequence[str] | None = None,
):
    """A grid of uint8 (N, 3, 32, 32) or float [0, 1] images with a title above each (six per row,
    each shown ~140 px wide in a notebook)."""
    import textwrap

    import matplotlib.pyplot as plt

    n = len(images)
    nrows = -(-n // ncols)
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(1.5 * ncols, (1.45 + 0.22 * lines) * nrows + 0.3), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = images[i].detach().cpu()
            img = img.float() / 255 if img.dtype == torch.uint8 else img.float()
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_title(titles[i], fontsize=9.5, color=colors[i] if colors else "black")
    if title:
        fig.suptitle(textwrap.fill(title, 95), fontsize=10.5)
    return finish(fig, path)


def plot_misclassified(
    images: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    indices: torch.Tensor,
    classes: Sequence[str],
    ncols: int = 6,
    path: str | Path | None = None,
    note: str = "",
):
    """Wrongly classified images (e.g. `analysis.misclassified`'s most confident mistakes first):
    true class, predicted class and the model's confidence in it; `note` says how the predictions
    were made."""
    conf, pred = probs.max(1)
    titles = [
        f"{classes[labels[i]]}\n-> {classes[pred[i]]} {100 * conf[i]:.0f}%"
        for i in indices.tolist()
    ]
    return show_images(
        images[indices],
        titles,
        ncols=ncols,
        path=path,
        title=(
            f"the {len(indices)} most confident mistakes on the test set (true -> predicted, "
            f"confidence){', ' + note if note else ''}"
        ),
    )


def plot_confusion(
    cm: torch.Tensor, classes: Sequence[str], path: str | Path | None = None, note: str = ""
):
    """Confusion matrix (row = true class) with counts, per-class accuracy on the row labels."""
    import matplotlib.pyplot as plt

    acc = 100.0 * cm.diag().float() / cm.sum(1).clamp_min(1).float()
    fig, ax = plt.subplots(figsize=(8, 7))
    # one hue, light to dark: readable without colour vision
    im = ax.imshow(cm.numpy(), cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), [f"{c} ({a:.1f}%)" for c, a in zip(classes, acc.tolist())])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (per-class accuracy)")
    hi = cm.max().item()
    for i in range(len(classes)):
        for j in range(len(classes)):
            v = cm[i, j].item()
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if v > hi / 2 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046).set_label("test images", fontsize=10)
    ax.set_title(
        f"confusion matrix: {cm.diag().sum().item()}/{cm.sum().item()} correct"
        f"{' (' + note + ')' if note else ''}",
        fontsize=10,
    )
    return finish(fig, path)
