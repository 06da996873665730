"""cifarkit: compact CIFAR-10 networks, data on the device, one training step, plots and analysis.

The public face is the names below, one per job (the notebook, README and docs use only these); the
modules behind them are laid out in README.md ("Layout"). Each name is imported on first use (PEP
562), so ``import cifarkit`` and the command line start without importing torch: ``python -m
cifarkit train`` takes its run-folder lock first, and ``--help`` answers at once.
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_PUBLIC: dict[str, str] = {
    # configuration and constants
    **dict.fromkeys(["CLASSES", "TTA_VIEWS", "CifarkitError"], "base"),
    **dict.fromkeys(["TrainConfig"], "config"),
    # networks
    **dict.fromkeys(["register", "build_model", "own_network"], "models"),
    # data
    **dict.fromkeys(["load_cifar10"], "data.sources"),
    **dict.fromkeys(["make_splits", "balanced_indices"], "data.splits"),
    **dict.fromkeys(["DeviceLoader"], "data.loader"),
    # training and evaluation
    **dict.fromkeys(["fit"], "training.trainer"),
    **dict.fromkeys(["lr_find"], "training.lrfind"),
    **dict.fromkeys(["TrainStep", "train_one_epoch"], "training.step"),
    **dict.fromkeys(["evaluate"], "training.evaluate"),
    **dict.fromkeys(["resolve_device", "choose_precision", "hardware_string"], "hardware"),
    **dict.fromkeys(["epoch_estimate", "timing_report"], "speed"),
    **dict.fromkeys(["model_from_checkpoint"], "runfolder.checkpoint"),
    # looking at a network and its results
    **dict.fromkeys(["summary_text"], "analysis.summary"),
    **dict.fromkeys(["receptive_field", "check_rules"], "analysis.rules"),
    **dict.fromkeys(["confusion_matrix", "misclassified"], "analysis.metrics"),
    **dict.fromkeys(["predict_image"], "inference"),
    **dict.fromkeys(["gradcam_misclassified"], "analysis.gradcam"),
    **dict.fromkeys(["compare_runs"], "analysis.compare"),
    **dict.fromkeys(["findings"], "analysis.findings"),
    **dict.fromkeys(["check_notebook", "check_this_notebook"], "handin"),
    **dict.fromkeys(
        [
            "plot_history",
            "plot_compare",
            "plot_lr",
            "plot_confusion",
            "plot_misclassified",
            "show_images",
            "load_baseline",
        ],
        "analysis.plots",
    ),
}
__all__ = sorted(_PUBLIC)
__version__ = "0.2.0"


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(
            f"module 'cifarkit' has no attribute {name!r} (its public names: cifarkit.__all__; "
            "everything else is imported from its module, e.g. cifarkit.models.seed)"
        )
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def _notebook_setup() -> None:
    """In a Jupyter kernel (IPython loaded), cifarkit's refusals show as one line."""
    import sys

    if "IPython" in sys.modules:
        from .nbtools import show_refusals_in_one_line

        show_refusals_in_one_line()


_notebook_setup()


def __dir__() -> list[str]:
    """The public names and the module's own dunders (not the helpers this file imports)."""
    return sorted({n for n in globals() if n.startswith("__")} | set(_PUBLIC))
