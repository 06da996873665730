"""Evaluation: class probabilities of a model on a loader (with test-time augmentation), their loss
and accuracy, and the same for a tensor of images. Functions of a model and data that return a dict
or tensors; nothing here writes files."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import DeviceLoader
from ..hardware import autocast, choose_precision, is_nhwc, keep_freed_memory, model_is_nhwc
from ..models import as_batch, checked_forward
from ..models.check import PROBE_BATCH


@torch.inference_mode()
def predict(
    model: nn.Module, loader, *, amp_dtype: torch.dtype | None = None, tta: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, 10) float32 and labels (N,), both on the CPU, in the loader's order.

    tta="flip" averages the logits of each image and its mirror image; "flip-translate" (airbench)
    gives that average weight 1/2 and the flip-averages of the image shifted by one pixel up-left
    and down-right (reflection padding) 1/4 each: six views.
    """
    device = next(model.parameters()).device
    model.eval()

    def mirror_avg(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (checked_forward(model, x).float() + checked_forward(model, x.flip(3)).float())

    probs, labels = [], []
    for x, y in loader:
        with autocast(device, amp_dtype):
            if tta == "none":
                logits = checked_forward(model, x).float()
            elif tta == "flip":
                logits = mirror_avg(x)
            else:
                padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
                shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
                # as the loader gave it
                layout = torch.channels_last if is_nhwc(x) else torch.contiguous_format
                logits = 0.5 * mirror_avg(x) + 0.25 * sum(
                    mirror_avg(s.contiguous(memory_format=layout)) for s in shifted
                )
        probs.append(logits.softmax(1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def score(
    probs: torch.Tensor, labels: torch.Tensor, *, verbose: bool = True, label: str = "Test"
) -> dict:
    """Loss (mean per image), accuracy (%) and counts from predicted probabilities; prints the
    seed's line."""
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    correct = int((probs.argmax(1) == labels).sum())
    total = len(labels)
    acc = 100.0 * correct / total
    if verbose:
        print(
            f"\n{label} set: Average loss: {loss:.4f}, Accuracy: {correct}/{total} ({acc:.2f}%)\n"
        )
    return {"loss": loss, "accuracy": acc, "correct": correct, "total": total}


def evaluate(
    model: nn.Module,
    loader,
    *,
    amp_dtype: torch.dtype | None = None,
    tta: str = "none",
    verbose: bool = True,
    label: str = "Test",
) -> dict:
    """`predict` then `score`: loss, accuracy (%), counts and seconds on `loader`."""
    start = time.perf_counter()
    probs, labels = predict(model, loader, amp_dtype=amp_dtype, tta=tta)
    return {
        **score(probs, labels, verbose=verbose, label=label),
        "seconds": time.perf_counter() - start,
    }


def predict_images(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    precision: str = "auto",
    tta: str = "none",
    batch_size: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict` on uint8 `images` (N, 3, 32, 32): batched on the model's device in the model's
    memory layout, with `precision` resolved for that device. Returns (probabilities, labels) on the
    CPU.
    """
    device = next(model.parameters()).device
    keep_freed_memory(device)  # a test pass of 1000-image batches is twice as fast with it
    n = len(images)
    loader = DeviceLoader(
        as_batch(images),
        as_batch(labels),
        max(batch_size, PROBE_BATCH),
        train=False,
        device=device,
        channels_last=model_is_nhwc(model),
    )
    amp, _ = choose_precision(precision, device)
    probs, labels = predict(model, loader, amp_dtype=amp, tta=tta)
    return probs[:n], labels[:n]  # a lone image ran as a batch of two (`models.check.as_batch`)
