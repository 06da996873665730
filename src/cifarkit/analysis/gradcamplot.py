"""The Grad-CAM figure: each misclassified image beside the maps of its predicted and its true class
(the maps themselves are computed in `gradcam`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .plots import finish


def plot_gradcam(
    images: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    indices: torch.Tensor,
    cams_pred: torch.Tensor,
    cams_true: torch.Tensor,
    classes: Sequence[str],
    path: str | Path | None = None,
    ncols: int = 2,
    layer: str | None = None,
    note: str = "",
):
    """Misclassified images, each as a group of three panels: the image, the Grad-CAM map of the
    PREDICTED class ("pred: cat 91%") over it, and the map of the TRUE class ("true: dog"); groups
    are set apart by a gap, with one colour scale. `images`, `labels`, `probs` cover the whole set;
    `indices` picks the images; `cams_pred` / `cams_true` hold one map per picked image, in order;
    `layer` names where the maps were read; `note` says how the predictions were made (e.g. with
    TTA). Two images per row by default, so each panel shows ~130 px wide in a notebook; the maps
    use viridis (readable without colour vision).
    """
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    conf, pred = probs.max(1)
    idx = indices.tolist()
    n = len(idx)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    # three panels per image, then a gap before the next image
    widths = ([1, 1, 1, 0.35] * ncols)[:-1]
    fig = plt.figure(figsize=(1.3 * sum(widths) + 0.9, 1.6 * nrows + 0.8))
    grid = fig.add_gridspec(nrows, len(widths), width_ratios=widths, wspace=0.06, hspace=0.3)
    shown = None
    for k, i in enumerate(idx):
        img = images[i].detach().cpu()
        img = (
            (img.float() / 255 if img.dtype == torch.uint8 else img.float())
            .permute(1, 2, 0)
            .clamp(0, 1)
            .numpy()
        )
        # the words say which map is which, not colours
        panels = (
            (None, f"{classes[labels[i]]}", "black"),
            (cams_pred[k], f"pred: {classes[pred[i]]} {100 * conf[i]:.0f}%", "black"),
            (cams_true[k], f"true: {classes[labels[i]]}", "black"),
        )
        for j, (cam, title, color) in enumerate(panels):
            ax = fig.add_subplot(grid[k // ncols, 4 * (k % ncols) + j])
            ax.axis("off")
            ax.imshow(img, interpolation="nearest")
            if cam is not None:
                shown = ax.imshow(
                    cam.detach().cpu().float().numpy(),
                    cmap="viridis",
                    alpha=0.55,
                    vmin=0,
                    vmax=1,
                    interpolation="bilinear",
                )
            ax.set_title(title, fontsize=9.5, color=color)
    # the bar shows the map's colours at full strength, not washed out by the overlay
    if shown is not None:
        bar = fig.colorbar(
            ScalarMappable(Normalize(0, 1), "viridis"), ax=fig.axes, fraction=0.02, pad=0.02
        )
        bar.set_label("evidence (each map / its max)", fontsize=9.5)
        bar.ax.tick_params(labelsize=9)
    where = f" at {layer}" if layer else ""
    how = f" ({note})" if note else ""
    fig.suptitle(
        textwrap.fill(
            f"Grad-CAM{where}: {n} misclassified test images{how}. Per image: the image, the "
            "evidence for the predicted class, the evidence for the true class",
            90,
        ),
        fontsize=10.5,
    )
    # the gridspec places the panels and the colour bar itself
    return finish(fig, path, tight=False)
