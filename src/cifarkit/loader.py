"""Batches from a dataset that lives on the training device, augmented batch-wise on that device.

Why not torchvision transforms + DataLoader: those run PIL crops and flips image by image in Python
(50,000 calls per epoch) and on a 2-core machine the worker processes compete with the training
threads. Here the whole uint8 dataset (150 MB) sits on the device once; each step slices a batch,
crops and flips it with a few tensor ops and normalises it (the airbench recipe).
"""
from __future__ import annotations

from typing import Iterator

import torch

from .config import CIFAR10_MEAN, CIFAR10_STD


def normalize(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, scaled to [0, 1] and standardised with the CIFAR-10 mean / std."""
    mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1)
    x = images.float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize`, to float images in [0, 1] for display."""
    mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() * std + mean).clamp(0, 1)


def _source_index(offset: torch.Tensor, size: int, padding: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Source coordinates (B, size) of a crop starting at `offset` in a virtually padded axis, and a
    mask of the coordinates that fall inside the image (False = zero padding)."""
    src = offset + torch.arange(size, device=offset.device) - padding
    if mode == "reflect":  # -1 -> 1, size -> size - 2 (numpy / torch 'reflect', no edge repeat)
        src = src.abs()
        src = torch.where(src > size - 1, 2 * (size - 1) - src, src)
        return src, torch.ones_like(src, dtype=torch.bool)
    inside = (src >= 0) & (src < size)
    return src.clamp(0, size - 1), inside


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None,
                mode: str = "zeros") -> torch.Tensor:
    """Pad by `padding` pixels (zeros, like torchvision's RandomCrop, or reflection), then take a random
    crop of the original size from each image.

    Done as one gather over a (B, C, H, W) index grid, without materialising the padded batch.
    """
    if padding == 0:
        return images
    b, c, h, w = images.shape
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=images.device, generator=generator)
    rows, row_ok = _source_index(dy, h, padding, mode)
    cols, col_ok = _source_index(dx, w, padding, mode)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    chans = torch.arange(c, device=images.device).view(1, c, 1, 1)
    out = images[batch, chans, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
    if mode == "zeros":
        out = out * (row_ok.view(b, 1, h, 1) & col_ok.view(b, 1, 1, w))
    return out


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose entry in the boolean vector `flip` is True."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    return flip_where(images, torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Paint one random size x size square per uint8 image (fully inside it) with the mean colour,
    which is 0 after normalisation."""
    if size == 0:
        return images
    b, _, h, w = images.shape
    y0 = torch.randint(0, h - size + 1, (b, 1, 1, 1), device=images.device, generator=generator)
    x0 = torch.randint(0, w - size + 1, (b, 1, 1, 1), device=images.device, generator=generator)
    ys = torch.arange(h, device=images.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, 1, w)
    inside = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    mean = torch.tensor([round(255 * m) for m in CIFAR10_MEAN], dtype=images.dtype, device=images.device)
    return torch.where(inside, mean.view(1, 3, 1, 1), images)


def augment(images: torch.Tensor, padding: int = 4, flip: bool = True,
            generator: torch.Generator | None = None, pad_mode: str = "zeros") -> torch.Tensor:
    """The seed's training augmentation on a uint8 batch: random crop (zero padding), then flip."""
    images = random_crop(images, padding, generator, pad_mode)
    return random_flip(images, generator) if flip else images


class DeviceLoader:
    """Iterate normalised (images, labels) batches of a uint8 dataset held on `device`.

    Training loaders shuffle and augment with a generator seeded from (seed, epoch), so an epoch's
    order and augmentation depend only on those two numbers: a resumed run repeats them exactly.
    flip="alternate" (airbench) mirrors a fixed random half of the images on even epochs and the other
    half on odd epochs, so every image is seen both ways within two epochs.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool,
                 device: torch.device | str = "cpu", crop_padding: int = 4, flip: str = "random",
                 pad_mode: str = "zeros", cutout: int = 0, channels_last: bool = False, seed: int = 0):
        if len(images) == 0:
            raise ValueError("DeviceLoader needs at least one image")
        self.device = torch.device(device)
        self.images = images.to(self.device)  # uint8: 4x less memory than float32
        self.labels = labels.to(self.device)
        self.batch_size, self.train = batch_size, train
        self.crop_padding, self.flip, self.pad_mode, self.cutout = crop_padding, flip, pad_mode, cutout
        self.channels_last, self.seed = channels_last, seed
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)  # ceil: the last partial batch is kept

    def set_epoch(self, epoch: int) -> None:
        """Choose which epoch's shuffle and augmentation the next iteration produces."""
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + self.epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        g = self.generator() if self.train else None
        order = torch.randperm(n, device=self.device, generator=g) if self.train else None
        for start in range(0, n, self.batch_size):
            if order is None:
                x, y = self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]
            else:
                idx = order[start:start + self.batch_size]
                x = random_crop(self.images[idx], self.crop_padding, g, self.pad_mode)
                if self.flip == "random":
                    x = random_flip(x, g)
                elif self.flip == "alternate":
                    x = flip_where(x, self.base_flips()[idx] ^ bool(self.epoch % 2))
                x = cutout(x, self.cutout, g)
                y = self.labels[idx]
            yield normalize(x, self.channels_last), y

    def base_flips(self) -> torch.Tensor:
        """The fixed random half of the images that alternating flip mirrors on even epochs."""
        if getattr(self, "_base_flips", None) is None:
            g = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 - 1)
            self._base_flips = torch.rand(len(self.labels), device=self.device, generator=g) < 0.5
        return self._base_flips
