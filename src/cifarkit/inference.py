"""Classify your own pictures: any size or mode, resized to the 32x32 RGB the networks were trained on.

    python -m cifarkit predict --checkpoint checkpoints/seed-net-s0.pt my_cat.jpg
    ck.predict_image(model, "my_cat.jpg")                      # in a notebook
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .base import CLASSES, CifarkitError
from .config import TrainConfig
from .engine import predict_images


class ImageError(CifarkitError):
    """An image to classify is missing or cannot be read."""


@dataclass
class Prediction:
    """Top classes of one image, most probable first, and notes on what was done to the input."""

    source: str
    top: list[tuple[str, float]]  # (class name, probability in [0, 1])
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return format_prediction(self)


def load_image(image) -> tuple[torch.Tensor, list[str]]:
    """A path or a PIL image -> uint8 (3, 32, 32) and notes ("resized from 640x480", "converted from RGBA").

    Non-square pictures are resized as a whole (not cropped), like CIFAR-10's own downscaled photos.
    """
    from PIL import Image, UnidentifiedImageError

    notes: list[str] = []
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ImageError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(image, Image.Image):
        raise ImageError(f"expected an image path or a PIL image, got {type(image).__name__}")
    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"first of {image.n_frames} frames")
    if image.mode != "RGB":
        notes.append(f"converted from {image.mode}")
        image = image.convert("RGB")
    if image.size != (32, 32):
        notes.append(f"resized from {image.size[0]}x{image.size[1]} to 32x32")
        image = image.resize((32, 32), Image.Resampling.BICUBIC, reducing_gap=3.0)  # antialiased downscale
    import numpy as np

    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous(), notes


def predict_image(model: nn.Module, image, *, cfg: TrainConfig | None = None, top: int = 3,
                  classes: tuple[str, ...] = CLASSES) -> Prediction:
    """Top-`top` classes with probabilities for one image (path or PIL image), with the run's test-time
    augmentation and precision when `cfg` is given (else single view, fp32)."""
    pixels, notes = load_image(image)
    cfg = cfg or TrainConfig(tta="none", precision="fp32")
    was_training = model.training
    probs, _ = predict_images(model, pixels[None], torch.zeros(1, dtype=torch.long), precision=cfg.precision,
                              tta=cfg.tta, batch_size=1)
    model.train(was_training)
    values, idx = probs[0].topk(min(top, len(classes)))
    source = str(image) if isinstance(image, (str, os.PathLike)) else "image"
    return Prediction(source, [(classes[i], float(v)) for v, i in zip(values, idx.tolist())], notes)


def format_prediction(p: Prediction) -> str:
    """One line: 'cat.jpg: cat 81.2%, dog 12.0%, frog 2.1% (resized from 640x480 to 32x32)'."""
    tops = ", ".join(f"{name} {100 * prob:.1f}%" for name, prob in p.top)
    return f"{p.source}: {tops}" + (f" ({'; '.join(p.notes)})" if p.notes else "")
