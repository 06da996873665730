"""Counting predictions: confusion matrix, per-class accuracy, the most confident mistakes."""

from __future__ import annotations

import torch


def confusion_matrix(
    preds: torch.Tensor, labels: torch.Tensor, num_classes: int = 10
) -> torch.Tensor:
    """(num_classes, num_classes) counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Accuracy (%) of each true class from a confusion matrix."""
    return 100.0 * cm.diag().float() / cm.sum(1).clamp_min(1).float()


def misclassified(probs: torch.Tensor, labels: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Indices of wrongly predicted images, most confident mistakes first (at most `k`)."""
    conf, pred = probs.max(1)
    wrong = (pred != labels).nonzero().flatten()
    order = conf[wrong].argsort(descending=True)
    return wrong[order][:k]
