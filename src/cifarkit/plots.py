"""Figures. Training plots read only the history that `fit` writes (a list of per-epoch dicts).

Every function returns the matplotlib Figure and, given `path`, also saves it as a PNG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def _epoch_axis(ax) -> None:
    """Label the x axis "epoch" with whole-number ticks only (no 2.5 epochs)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _finish(fig, path: str | Path | None):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def plot_history(history: Sequence[dict], path: str | Path | None = None, eval_label: str = "test",
                 title: str | None = None):
    """Loss and accuracy per epoch, train vs evaluation set, side by side."""
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, name in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy (%)")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(epochs, [h[f"eval_{key}"] for h in history], "o-", ms=3, label=eval_label)
        _epoch_axis(ax)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    best = max(history, key=lambda h: h["eval_accuracy"])
    # In the empty lower-right corner (accuracy rises left to right), boxed, with an arrow to the final point.
    ax_acc.annotate(f"{eval_label} {history[-1]['eval_accuracy']:.2f}% (final)",
                    (epochs[-1], history[-1]["eval_accuracy"]), xytext=(0.97, 0.06), textcoords="axes fraction",
                    ha="right", bbox=dict(boxstyle="round", fc="white", ec="0.7"),
                    arrowprops=dict(arrowstyle="->", color="0.4"))
    ax_acc.set_title(f"best {eval_label} {best['eval_accuracy']:.2f}% at epoch {best['epoch']}", fontsize=10)
    ax_loss.set_title("train loss includes label smoothing, if any", fontsize=10)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_compare(histories: dict[str, Sequence[dict]], path: str | Path | None = None,
                 reference: tuple[str, float] | None = None):
    """Evaluation accuracy per epoch of several runs on one axis (e.g. the seed recipe vs ours)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in histories.items():
        ax.plot([h["epoch"] for h in history], [h["eval_accuracy"] for h in history], "o-", ms=3,
                label=f"{name}: {history[-1]['eval_accuracy']:.2f}% at epoch {history[-1]['epoch']}")
    if reference:
        ax.axhline(reference[1], color="grey", ls="--", lw=1, label=f"{reference[0]}: {reference[1]:.2f}%")
    _epoch_axis(ax)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _finish(fig, path)


def plot_lr(history: Sequence[dict], path: str | Path | None = None):
    """The learning rate at every optimiser step, on an epoch axis."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    xs, ys = [], []
    for h in history:
        lrs = h.get("lrs") or [h["lr"]]
        xs += [h["epoch"] - 1 + (i + 1) / len(lrs) for i in range(len(lrs))]
        ys += lrs
    ax.plot(xs, ys)
    _epoch_axis(ax)
    ax.set_ylabel("learning rate")
    ax.set_title("learning-rate schedule (per step)", fontsize=10)
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def show_images(images: torch.Tensor, titles: Sequence[str], ncols: int = 8,
                path: str | Path | None = None, title: str | None = None, colors: Sequence[str] | None = None):
    """A grid of uint8 (N, 3, 32, 32) or float [0, 1] images with a title above each."""
    import matplotlib.pyplot as plt

    n = len(images)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.45 * ncols, 1.6 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = images[i].detach().cpu()
            img = img.float() / 255 if img.dtype == torch.uint8 else img.float()
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_title(titles[i], fontsize=7.5, color=colors[i] if colors else "black")
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_misclassified(images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, indices: torch.Tensor,
                       classes: Sequence[str], ncols: int = 8, path: str | Path | None = None):
    """Wrongly classified images: true class, predicted class and the model's confidence in it."""
    conf, pred = probs.max(1)
    titles = [f"{classes[labels[i]]}\n-> {classes[pred[i]]} {100 * conf[i]:.0f}%" for i in indices.tolist()]
    return show_images(images[indices], titles, ncols=ncols, path=path,
                       title=f"{len(indices)} misclassified test images (true -> predicted, confidence)")


def plot_confusion(cm: torch.Tensor, classes: Sequence[str], path: str | Path | None = None):
    """Confusion matrix (row = true class) with counts, per-class accuracy on the row labels."""
    import matplotlib.pyplot as plt

    acc = 100.0 * cm.diag().float() / cm.sum(1).clamp_min(1).float()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(cm.numpy(), cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), [f"{c} ({a:.1f}%)" for c, a in zip(classes, acc.tolist())])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (per-class accuracy)")
    hi = cm.max().item()
    for i in range(len(classes)):
        for j in range(len(classes)):
            v = cm[i, j].item()
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7.5, color="white" if v > hi / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"confusion matrix: {cm.diag().sum().item()}/{cm.sum().item()} correct", fontsize=10)
    return _finish(fig, path)
