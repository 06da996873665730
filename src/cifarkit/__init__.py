"""cifarkit: compact CIFAR-10 networks, data on the device, a pure training engine, plots and analysis."""
from .analysis import (check_rules, confusion_matrix, final_receptive_field, format_rf_table, format_rules,
                       misclassified, per_class_accuracy, receptive_field, summary_text)
from .checkpoint import CheckpointError, WriteError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import (CIFAR10_MEAN, CIFAR10_STD, CLASSES, RECIPES, CifarkitError, ConfigError, TrainConfig)
from .data import Cifar10, DataError, balanced_indices, fingerprint, load_cifar10, split_train_val
from .engine import (DivergenceError, choose_precision, evaluate, make_optimizer, make_scheduler, predict,
                     resolve_device, resolve_precision, score, train_one_epoch)
from .explain import find_target_layer, gradcam, gradcam_misclassified, plot_gradcam
from .lrfind import LRFindResult, describe, lr_find, lr_range_test, plot_lr_find
from .loader import DeviceLoader, augment, denormalize, normalize
from .models import MODELS, SeedNet, build_model, count_parameters, create_model, register
from .plots import (load_baseline, plot_compare, plot_confusion, plot_history, plot_lr, plot_misclassified,
                    show_images)
from .inference import Prediction, format_prediction, load_image, predict_image
from .rundir import RunInterrupted, RunLock
from .trainer import FitResult, fit, hardware_string, make_splits

__version__ = "0.1.0"
