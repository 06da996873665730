"""cifarkit: compact CIFAR-10 networks, data on the device, a training engine, plots and analysis.

The public names below are imported on first use (PEP 562), so ``import cifarkit`` and the command line
start without importing torch: ``python -m cifarkit train`` takes its run-folder lock first, and
``--help`` answers at once.
"""
from __future__ import annotations

import importlib
import importlib.util

# public name -> the module that defines it
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(["check_rules", "confusion_matrix", "final_receptive_field", "format_rf_table", "format_rules",
                     "misclassified", "per_class_accuracy", "receptive_field", "summary_text"], "analysis"),
    **dict.fromkeys(["CheckpointError", "WriteError", "load_checkpoint", "model_from_checkpoint",
                     "save_checkpoint"], "checkpoint"),
    **dict.fromkeys(["CIFAR10_MEAN", "CIFAR10_STD", "CLASSES", "RECIPES", "CifarkitError", "ConfigError",
                     "TrainConfig"], "config"),
    **dict.fromkeys(["Cifar10", "DataError", "balanced_indices", "fingerprint", "load_cifar10",
                     "split_train_val"], "data"),
    **dict.fromkeys(["DivergenceError", "choose_precision", "evaluate", "make_optimizer", "make_scheduler",
                     "predict", "resolve_device", "resolve_precision", "score", "train_one_epoch"], "engine"),
    **dict.fromkeys(["find_target_layer", "gradcam", "gradcam_misclassified", "plot_gradcam"], "explain"),
    **dict.fromkeys(["LRFindResult", "describe", "lr_find", "lr_range_test", "plot_lr_find"], "lrfind"),
    **dict.fromkeys(["DeviceLoader", "augment", "denormalize", "normalize"], "loader"),
    **dict.fromkeys(["MODELS", "SeedNet", "build_model", "count_parameters", "create_model", "register"], "models"),
    **dict.fromkeys(["load_baseline", "plot_compare", "plot_confusion", "plot_history", "plot_lr",
                     "plot_misclassified", "show_images"], "plots"),
    **dict.fromkeys(["Prediction", "format_prediction", "load_image", "predict_image"], "inference"),
    **dict.fromkeys(["RunInterrupted"], "rundir"),
    **dict.fromkeys(["RunLock"], "runlock"),
    **dict.fromkeys(["FitResult", "fit", "make_splits"], "trainer"),
    **dict.fromkeys(["hardware_string", "choose_channels_last"], "hardware"),
    **dict.fromkeys(["MEASURED", "epoch_estimate"], "speed"),
}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: ck.config, ck.engine, ...
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'cifarkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
