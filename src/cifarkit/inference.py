"""Classify your own pictures: any size or mode, resized to the 32x32 RGB the networks were trained
on.

python -m cifarkit predict --checkpoint checkpoints/seed-net-s0.pt my_cat.jpg
ck.predict_image(model, "my_cat.jpg")                      # in a notebook
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .base import CLASSES, CifarkitError, show_path
from .config import TrainConfig
from .data.dataset import DataError
from .data.decode import open_rgb
from .training.evaluate import predict_images


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
    """A path or a PIL image -> uint8 (3, 32, 32) and notes ("resized from 640x480", "converted from
    RGBA").

    Decoded as a viewer shows it (`data.decode.open_rgb`: 16-bit, transparency, EXIF orientation); a
    large JPEG is decoded at a reduced scale. Non-square pictures are resized as a whole (not
    cropped), like CIFAR-10's own downscaled photos.
    """
    from PIL import Image

    notes: list[str] = []
    if isinstance(image, (str, os.PathLike)):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", os.fspath(image)):  # https://, ftp://, s3://
            raise ImageError(
                f"{os.fspath(image)} is a URL: cifarkit reads image files on this machine only;"
                " download it first (e.g. urllib.request.urlretrieve(url, 'photo.jpg'))"
            )
        path = Path(image)
        shown = show_path(path)
        if path.is_dir():
            raise ImageError(
                f"{shown} is a folder, not an image (give the image files: {shown}/*.jpg)"
            )
        if not path.is_file():
            raise ImageError(f"image not found: {shown}")
        try:
            image, notes = open_rgb(path, str(path), draft=64)
        except DataError as e:
            raise ImageError(str(e)) from None
    elif isinstance(image, Image.Image):
        if image.mode != "RGB":
            notes.append(f"converted from {image.mode}")
            image = image.convert("RGB")
    else:
        raise ImageError(f"expected an image path or a PIL image, got {type(image).__name__}")
    if image.size != (32, 32):
        # a JPEG may have been decoded at a reduced scale
        w, h = image.info.get("source_size", image.size)
        notes.append(f"resized from {w}x{h} to 32x32")
        # antialiased downscale
        image = image.resize((32, 32), Image.Resampling.BICUBIC, reducing_gap=3.0)
    import numpy as np

    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous(), notes


def predict_image(
    model: nn.Module,
    image,
    *,
    cfg: TrainConfig | None = None,
    top: int = 3,
    classes: tuple[str, ...] = CLASSES,
    precision: str | None = None,
) -> Prediction:
    """Top-`top` classes with probabilities for one image (path or PIL image), with the run's
    test-time augmentation when `cfg` is given (else single view) and `precision`: the run's, as
    its runtime record says (`FitResult.precision`; default: the config's, else fp32)."""
    pixels, notes = load_image(image)
    cfg = cfg or TrainConfig(tta="none", precision="fp32")
    was_training = model.training
    probs, _ = predict_images(
        model,
        pixels[None],
        torch.zeros(1, dtype=torch.long),
        precision=precision or cfg.precision,
        tta=cfg.tta,
        batch_size=1,
    )
    model.train(was_training)
    values, idx = probs[0].topk(min(top, len(classes)))
    source = str(image) if isinstance(image, (str, os.PathLike)) else "image"
    return Prediction(source, [(classes[i], float(v)) for v, i in zip(values, idx.tolist())], notes)


def format_prediction(p: Prediction) -> str:
    """One line: 'cat.jpg: cat 81.2%, dog 12.0%, frog 2.1% (resized from 640x480 to 32x32)'."""
    tops = ", ".join(f"{name} {100 * prob:.1f}%" for name, prob in p.top)
    return f"{p.source}: {tops}" + (f" ({'; '.join(p.notes)})" if p.notes else "")
