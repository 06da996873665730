"""Batches from a dataset that lives on the training device, augmented on that device.

Why not torchvision transforms + DataLoader: those run PIL crops and flips image by image in Python
(50,000 calls per epoch) and on a 2-core machine the worker processes compete with the training
threads. Here the whole uint8 dataset (150 MB) sits on the device once. When a training epoch
starts, the loader draws that epoch's parameters for every image (crop offset, flip, cutout square:
a few (N,) tensors from a generator seeded with (seed, epoch)), augments the whole set in a few
large batched ops (10,000 images each, to bound memory), and then yields shuffled slices,
normalised per batch. Nothing in an epoch reads a value back to the host, so a GPU never waits
for Python.

Defaults come from `TrainConfig` (reflection padding, alternating flips, ...): the loader, `augment`
and `DeviceLoader.from_config` therefore train what a default config trains.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..base import CIFAR10_MEAN, CIFAR10_STD, ConfigError
from ..config import TrainConfig
from ..hardware import channels_last_for
from .augmentation import DEFAULTS, crop_at, cutout_at, flip_where
from .transforms import ImageTransforms

CHUNK = 10_000  # images per batched augmentation op: ~30 MB uint8 plus ~4x that in temporaries


def normalize(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, scaled to [0, 1] and standardised with the CIFAR-10 mean /
    std."""
    mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1)
    x = images.float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def augment(
    images: torch.Tensor,
    padding: int = DEFAULTS["crop_padding"],
    flip: str = DEFAULTS["flip"],
    generator: torch.Generator | None = None,
    pad_mode: str = DEFAULTS["pad_mode"],
    *,
    cutout: int = DEFAULTS["cutout"],
    transforms: Sequence[str] = (),
    epoch: int = 0,
    seed: int = DEFAULTS["seed"],
) -> torch.Tensor:
    """The training augmentation of a uint8 batch, exactly as a training loader over these images
    applies it in `epoch`: random crop after padding (reflection by default), flips ("alternate" by
    default: a fixed random half of the images mirrored on even epochs, the other half on odd ones),
    `transforms`, then cutout. Defaults are TrainConfig's. A `generator`, if given, replaces `seed`
    by a number drawn from it."""
    if generator is not None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    loader = DeviceLoader(
        images,
        torch.zeros(len(images), dtype=torch.long),
        len(images),
        train=True,
        device=images.device,
        crop_padding=padding,
        flip=flip,
        pad_mode=pad_mode,
        cutout=cutout,
        transforms=transforms,
        seed=seed,
    )
    # in chunks, like training: bounded memory for a large batch
    return loader.epoch_images(epoch)[0]


class DeviceLoader:
    """Iterate normalised (images, labels) batches of a uint8 dataset held on `device`.

    Training loaders shuffle and augment with a generator seeded from (seed, epoch), so an epoch's
    order and augmentation depend only on those two numbers: a resumed run repeats them exactly.
    flip="alternate" (airbench) mirrors a fixed random half of the images on even epochs and the
    other half on odd epochs, so every image is seen both ways within two epochs. `transforms` are
    torchvision.transforms.v2 specs (see `data.transforms`), applied per image after crop and
    flip. Evaluation loaders (train=False) yield the images in order, unaugmented.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str = "cpu",
        crop_padding: int = DEFAULTS["crop_padding"],
        flip: str = DEFAULTS["flip"],
        pad_mode: str = DEFAULTS["pad_mode"],
        cutout: int = DEFAULTS["cutout"],
        transforms: Sequence[str] | None = None,
        channels_last: bool = False,
        seed: int = DEFAULTS["seed"],
    ):
        if len(images) == 0:
            raise ValueError("DeviceLoader needs at least one image")
        # the settings were validated by TrainConfig; only the images are new here
        side = min(images.shape[-2:])
        if cutout > side:
            raise ConfigError(
                f"cutout must be a square side in [0, {side}] for {side}x{side} images, got"
                f" {cutout!r}"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)  # uint8: 4x less memory than float32
        self.labels = labels.to(self.device)
        self.batch_size, self.train = batch_size, train
        self.crop_padding, self.flip, self.pad_mode, self.cutout = (
            crop_padding,
            flip,
            pad_mode,
            cutout,
        )
        self.transforms = ImageTransforms(transforms or ())
        self.channels_last, self.seed = channels_last, seed
        self.epoch = 0

    @classmethod
    def from_config(
        cls,
        images: torch.Tensor,
        labels: torch.Tensor,
        cfg: TrainConfig,
        *,
        train: bool,
        device: torch.device | str = "cpu",
        channels_last: bool | None = None,
    ) -> "DeviceLoader":
        """A loader with every setting from `cfg`: batch_size (train) or eval_batch_size,
        crop_padding, pad_mode, flip, cutout, transforms, seed; `channels_last` (NHWC batches) as
        given, by default what the config's channels_last picks on `device` without measuring (pass
        the model's layout: `model_is_nhwc`).
        """
        device = torch.device(device)
        if channels_last is None:
            channels_last = channels_last_for(cfg, device)
        return cls(
            images,
            labels,
            cfg.batch_size if train else cfg.eval_batch_size,
            train=train,
            device=device,
            crop_padding=cfg.crop_padding,
            flip=cfg.flip,
            pad_mode=cfg.pad_mode,
            cutout=cfg.cutout,
            transforms=cfg.transforms,
            channels_last=channels_last,
            seed=cfg.seed,
        )

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)  # ceil: the last partial batch is kept

    def set_epoch(self, epoch: int) -> None:
        """Choose which epoch's shuffle and augmentation the next iteration produces."""
        self.epoch = epoch

    def generator(self, epoch: int | None = None) -> torch.Generator:
        """The generator of an epoch's order and augmentation parameters (default: the current
        epoch). A CPU generator on every device: the draws (a few (N,) tensors per epoch, copied to
        the device once) are the same whatever device trains, so a run resumed on another device
        type sees the same batches."""
        epoch = self.epoch if epoch is None else epoch
        return torch.Generator().manual_seed(self.seed * 100_003 + epoch)

    def base_flips(self) -> torch.Tensor:
        """The fixed random half of the images that alternating flip mirrors on even epochs."""
        if getattr(self, "_base_flips", None) is None:
            g = torch.Generator().manual_seed(self.seed * 100_003 - 1)
            self._base_flips = (torch.rand(len(self.labels), generator=g) < 0.5).to(self.device)
        return self._base_flips

    def epoch_draws(self, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """An epoch's order (a permutation of the N images) and augmentation parameters, one entry
        per dataset index: crop offsets dy, dx in [0, 2 * crop_padding], flip (bool), cutout corner
        cy, cx.
        """
        n, (h, w) = len(self.labels), self.images.shape[-2:]
        g = self.generator(epoch)
        order = torch.randperm(n, generator=g)
        p: dict[str, torch.Tensor] = {}
        if self.crop_padding:
            p["dy"] = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=g)
            p["dx"] = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=g)
        if self.flip == "random":
            p["flip"] = torch.rand(n, generator=g) < 0.5
        if self.cutout:
            p["cy"] = torch.randint(0, h - self.cutout + 1, (n,), generator=g)
            p["cx"] = torch.randint(0, w - self.cutout + 1, (n,), generator=g)
        order, p = order.to(self.device), {k: v.to(self.device) for k, v in p.items()}
        if self.flip == "alternate":
            p["flip"] = self.base_flips() ^ bool(epoch % 2)
        return order, p

    def _augment(
        self, idx: torch.Tensor | slice, ids: Sequence[int], epoch: int, p: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Augment images[idx] (uint8) with the epoch's parameters `p`; `ids` are the same dataset
        indices as Python ints (they seed the transforms' per-image draws without reading a device
        tensor)."""
        x = self.images[idx]
        if "dy" in p:
            x = crop_at(x, p["dy"][idx], p["dx"][idx], self.crop_padding, self.pad_mode)
        if "flip" in p:
            x = flip_where(x, p["flip"][idx])
        if self.transforms:
            x = self.transforms(x, ids, key=self.seed * 100_003 + epoch)
        if "cy" in p:
            x = cutout_at(x, p["cy"][idx], p["cx"][idx], self.cutout)
        return x

    def augmented(self, indices: torch.Tensor | Sequence[int], epoch: int = 0) -> torch.Tensor:
        """The uint8 images (n, 3, H, W), on the device, that training sees for these dataset
        indices in `epoch` (same crop, flip, transforms and cutout); unaugmented for an evaluation
        loader."""
        ids = indices.tolist() if isinstance(indices, torch.Tensor) else [int(i) for i in indices]
        if ids and not 0 <= min(ids) <= max(ids) < len(self.labels):
            raise IndexError(
                f"indices must be in [0, {len(self.labels)}), got {min(ids)}..{max(ids)}"
            )
        idx = torch.tensor(ids, dtype=torch.long, device=self.device)
        if not self.train:
            return self.images[idx]
        return self._augment(idx, ids, epoch, self.epoch_draws(epoch)[1])

    def preview(self, indices: torch.Tensor | Sequence[int], epoch: int = 0) -> torch.Tensor:
        """`augmented` on the CPU: exactly what training sees for these images in `epoch`, for
        figures."""
        return self.augmented(indices, epoch).cpu()

    def epoch_images(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole training set augmented for `epoch`, in dataset order (uint8), and the epoch's
        order."""
        order, p = self.epoch_draws(epoch)
        out = torch.empty_like(self.images)
        for start in range(0, len(out), CHUNK):
            stop = min(start + CHUNK, len(out))
            out[start:stop] = self._augment(slice(start, stop), range(start, stop), epoch, p)
        return out, order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = len(self.labels), self.batch_size
        if not self.train:
            for start in range(0, n, bs):
                yield (
                    normalize(self.images[start : start + bs], self.channels_last),
                    self.labels[start : start + bs],
                )
            return
        images, order = self.epoch_images(self.epoch)
        for start in range(0, n, bs):
            idx = order[
                start : start + bs
            ]  # a device tensor: the gathers below never reach the host
            yield normalize(images[idx], self.channels_last), self.labels[idx]
