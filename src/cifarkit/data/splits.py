"""Which images a run trains, evaluates and tests on: class-balanced seeded subsets and the
validation split, defined once (`make_splits`) for training, the LR range test and `evaluate
--val-split`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TrainConfig
from .dataset import Cifar10, DataError

VAL_SEED = 12345  # the validation split is the same for every training seed, so runs compare on it


def balanced_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of a class-balanced, seeded random subset of `n` items (sorted, so order is
    stable)."""
    if n >= len(labels):
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    picks = []
    for c, k in zip(classes.tolist(), per):
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(picks).sort().values


def split_train_val(images: torch.Tensor, labels: torch.Tensor, n_val: int, seed: int = 0):
    """Carve a class-balanced validation set of `n_val` images out of a training set."""
    if not 0 < n_val < len(labels):
        raise DataError(f"val_split must be between 1 and {len(labels) - 1}, got {n_val}")
    val = balanced_indices(labels, n_val, seed)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return images[keep], labels[keep], images[val], labels[val]


@dataclass
class Splits:
    """The images a run trains on, evaluates on each epoch ("val" or "test"), and finally tests
    on."""

    train: tuple[torch.Tensor, torch.Tensor]
    eval: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    eval_name: str  # "Validation" or "Test"


def make_splits(cfg: TrainConfig, data: Cifar10) -> Splits:
    """Apply `limit_train` / `limit_test` (balanced, seeded with `cfg.seed`), then carve the
    validation split of `val_split` images (seeded with VAL_SEED) out of what is left of the
    training set."""
    tx, ty = data.train_images, data.train_labels
    if cfg.limit_train:
        idx = balanced_indices(ty, cfg.limit_train, cfg.seed)
        tx, ty = tx[idx], ty[idx]
    test = (data.test_images, data.test_labels)
    if cfg.limit_test:
        idx = balanced_indices(test[1], cfg.limit_test, cfg.seed)
        test = (test[0][idx], test[1][idx])
    if cfg.val_split:
        tx, ty, vx, vy = split_train_val(tx, ty, cfg.val_split, seed=VAL_SEED)
        return Splits((tx, ty), (vx, vy), test, "Validation")
    return Splits((tx, ty), test, test, "Test")
