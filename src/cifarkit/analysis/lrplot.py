"""How an LR range test reads for people: its two-line description and its loss-against-LR figure
(the result itself and the test that measures it are in `training.lrfind`)."""

from __future__ import annotations

from pathlib import Path

from .plots import COLORS, finish

# `result` below is a training.lrfind.LRFindResult; not imported here: the analysis wing sits below
# training.


def _lr_text(lr: float) -> str:
    return f"{lr:.2g}" if lr >= 0.01 else f"{lr:.1e}"


def describe(result: "LRFindResult", recipe_lr: float | None = None) -> str:  # noqa: F821
    """Two lines: the suggestion and its rule, the other readings and the recipe's peak against it;
    then how the test ended. E.g. "suggested peak LR 0.43 (minimum of the smoothed loss; steepest
    descent at 0.013, minimum / 10 = 0.043); the recipe uses 0.4 (0.93x the suggestion)"."""
    recipe_lr = recipe_lr if recipe_lr is not None else result.recipe_lr
    text = (
        f"suggested peak LR {_lr_text(result.suggestion)} ({result.rule}; steepest descent at "
        f"{_lr_text(result.steepest_lr)}, minimum / 10 = {_lr_text(result.min_loss_lr_over_10)})"
    )
    if recipe_lr is not None:
        text += (
            f"; the recipe uses {_lr_text(recipe_lr)} ({recipe_lr / result.suggestion:.2g}x the"
            " suggestion)"
        )
    if result.diverged:
        stop = f"stopped at LR {_lr_text(result.lrs[-1])}: the loss diverged"
    elif result.suggestion == result.lrs[-1]:
        stop = f"the loss still fell at the last LR {_lr_text(result.lrs[-1])}: raise the end LR"
    else:
        stop = f"ran to LR {_lr_text(result.lrs[-1])} without diverging"
    return (
        text + f"\n{len(result.lrs)} steps from {_lr_text(result.start_lr)}, {stop},"
        f" {result.seconds:.0f} s"
    )


def plot_lr_find(
    result: "LRFindResult",  # noqa: F821
    recipe_lr: float | None = None,
    path: str | Path | None = None,
):
    """Loss against learning rate (log axis): raw and smoothed, and why the suggestion is what it
    is: the smoothed loss's minimum is marked on the curve, with the steepest descent and the
    recipe's peak beside it. The legend sits below the axes, so it covers no data and takes none of
    the plot's width."""
    import matplotlib.pyplot as plt

    recipe_lr = recipe_lr if recipe_lr is not None else result.recipe_lr
    fig, ax = plt.subplots(figsize=(9, 4.6))
    ax.plot(result.lrs, result.raw_losses, color="0.7", lw=0.8, label="loss per batch")
    ax.plot(result.lrs, result.losses, color=COLORS[0], lw=1.8, label="smoothed loss")
    low = min(range(len(result.losses)), key=result.losses.__getitem__)
    ax.plot(
        [result.lrs[low]],
        [result.losses[low]],
        "o",
        ms=8,
        mfc="none",
        mec=COLORS[3],
        mew=2,
        ls="none",
        label=f"lowest smoothed loss {result.losses[low]:.3f} at LR {_lr_text(result.lrs[low])}",
    )
    ax.axvline(
        result.suggestion,
        color=COLORS[3],
        ls="--",
        label=f"suggested peak {_lr_text(result.suggestion)} ({result.rule})",
    )
    ax.axvline(
        result.steepest_lr,
        color=COLORS[1],
        ls=":",
        lw=2,
        label=f"steepest descent {_lr_text(result.steepest_lr)}",
    )
    if recipe_lr is not None:
        ax.axvline(
            recipe_lr, color=COLORS[2], ls="-.", lw=1.5, label=f"recipe peak {_lr_text(recipe_lr)}"
        )
    # Frame the useful part: from the lowest loss up to a little above the starting loss, so a
    # divergence shows as a line leaving the top rather than squashing the descent.
    lowest, first = min(result.losses + result.raw_losses), result.losses[0]
    ax.set_ylim(lowest - 0.1 * (first - lowest + 1e-3), first + 0.4 * (first - lowest + 1e-3))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(
        f"LR range test: {len(result.lrs)} steps, {result.start_lr:g} -> {result.lrs[-1]:.3g}"
        f"{' (diverged)' if result.diverged else ''}",
        fontsize=10.5,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    return finish(fig, path)
