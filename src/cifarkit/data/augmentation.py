"""The built-in training augmentation as batched tensor ops on uint8 images: crop, flip, cutout.

Each op applies given per-image parameters: the loader draws one epoch's parameters for every image
at once (`DeviceLoader`), so any subset of images can be re-augmented exactly
(`DeviceLoader.preview`). All ops work on any device and never read a value back to the host (no
GPU synchronisation). (This module is not called ``augment``: that name is the
`data.loader.augment` function.)
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..base import CIFAR10_MEAN
from ..config import TrainConfig

# TrainConfig's defaults, the one source of them (fields with a default_factory, e.g. transforms,
# are absent).
DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(TrainConfig)
    if f.default is not dataclasses.MISSING
}

# The mean colour as uint8 (RGB): what cutout paints, which is 0 after normalisation.
MEAN_UINT8: tuple[int, int, int] = tuple(round(255 * m) for m in CIFAR10_MEAN)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map coordinates outside [0, size) back inside by reflection without edge repeat (-1 -> 1,
    size -> size - 2), like numpy / torch 'reflect' padding."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def crop_at(
    images: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    padding: int,
    mode: str = DEFAULTS["pad_mode"],
) -> torch.Tensor:
    """Crop each image of a (B, C, H, W) batch at offset (dy[i], dx[i]) in [0, 2 * padding] of the
    image padded by `padding` pixels (mode "zeros" or "reflect"), keeping the size H x W.

    Two gathers (rows, then columns) with small (B, H) index tensors expanded over the other axes:
    no padded batch for reflection and no full-size index tensor, which on a CPU costs more than
    the copy.
    """
    if padding == 0:
        return images
    b, c, h, w = images.shape
    if mode == "zeros":  # gather inside the zero-padded batch: 1.6x the pixels, no masking pass
        images = F.pad(images, (padding,) * 4)
        rows = dy.view(b, 1) + torch.arange(h, device=images.device)
        cols = dx.view(b, 1) + torch.arange(w, device=images.device)
    else:
        rows = _reflect(dy.view(b, 1) + torch.arange(h, device=images.device) - padding, h)
        cols = _reflect(dx.view(b, 1) + torch.arange(w, device=images.device) - padding, w)
    out = images.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, images.shape[3]))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose entry in the boolean vector `flip` is True."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def cutout_at(images: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, size: int) -> torch.Tensor:
    """Paint the size x size square with top-left corner (y0[i], x0[i]) of each uint8 image with the
    CIFAR-10 mean colour (0 after normalisation)."""
    if size == 0:
        return images
    _, _, h, w = images.shape
    ys = torch.arange(h, device=images.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, 1, w)
    y0, x0 = y0.view(-1, 1, 1, 1), x0.view(-1, 1, 1, 1)
    inside = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    mean = torch.tensor(MEAN_UINT8, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return torch.where(inside, mean, images)
