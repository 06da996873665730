"""Per-epoch cost of the training augmentation on this machine, side by side in one process.

  a   the built-in augmentation of the default TrainConfig: random crop after reflection padding (4
  px) and
      alternating flips, for the whole training set (50,000 images), as `DeviceLoader` does it when
      an epoch starts, in batched ops over 10,000 images;
  b   a + transforms ["RandomRotation(degrees=15)", "ColorJitter(brightness=0.3, contrast=0.3,
  saturation=0.3)"]
      with an independent random draw per image (cifarkit's batched path for these two transforms);
  c   (unless --no-per-image) b's transforms called once per image, as a generic torchvision v2
  transform is:
      timed on --per-image-n images and scaled to the epoch (marked "est.").

Each row: seconds per epoch for the augmentation alone ("augment") and for a whole pass of the
training loader ("loader pass": augmentation + shuffled batches of 256, normalised to float32), the
best of --repeat.

    python benchmarks/augment_cost.py                                   # synthetic random uint8
    images python benchmarks/augment_cost.py --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cifarkit.config import TrainConfig  # noqa: E402
from cifarkit.data.loader import DeviceLoader
from cifarkit.data.transforms import ImageTransforms  # noqa: E402

TRANSFORMS = [
    "RandomRotation(degrees=15)",
    "ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)",
]


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else platform), for the report."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_of(repeat: int, fn) -> float:
    """The fastest of `repeat` timed calls, in seconds (the minimum is the least disturbed by other
    load)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", help="a CIFAR-10 source for load_cifar10 (default: synthetic random uint8 images)"
    )
    p.add_argument("--n", type=int, default=50_000, help="training images (default 50,000)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--repeat", type=int, default=2, help="timed epochs per row; the best is shown (default 2)"
    )
    p.add_argument(
        "--per-image-n", type=int, default=2_000, help="images timed for row c (default 2,000)"
    )
    p.add_argument("--no-per-image", action="store_true", help="skip row c")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    if a.data:
        from cifarkit.data.sources import load_cifar10

        data = load_cifar10(a.data, progress=False)
        images, labels = data.train_images[: a.n], data.train_labels[: a.n]
        source = a.data
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (a.n, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (a.n,), generator=g)
        source = "synthetic random uint8"
    n = len(labels)
    load = f"; load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(
        f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; device"
        f" {a.device}{load}"
    )
    print(f"{n:,} images ({source}); best of {a.repeat} epochs per row\n")
    print(f"{'row':<4}{'augmentation':<58}{'augment s/epoch':>16}{'loader pass s/epoch':>21}")

    cfg, augment_s = TrainConfig(), {}
    rows = [
        ("a", f"crop {cfg.crop_padding} px ({cfg.pad_mode}) + {cfg.flip} flip", []),
        ("b", "a + RandomRotation(15) + ColorJitter(0.3, 0.3, 0.3)", TRANSFORMS),
    ]
    for name, what, transforms in rows:
        loader = DeviceLoader.from_config(
            images, labels, TrainConfig(transforms=transforms), train=True, device=a.device
        )
        # warm-up: imports, first calls
        loader.epoch_images(0) if n <= 1000 else loader.augmented(range(100))
        epoch = iter(range(1, 1_000_000))
        aug = augment_s[name] = best_of(a.repeat, lambda: loader.epoch_images(next(epoch)))

        def one_pass() -> None:
            loader.set_epoch(next(epoch))
            for _ in loader:
                pass

        full = best_of(a.repeat, one_pass)
        print(f"{name:<4}{what:<58}{aug:>16.2f}{full:>21.2f}", flush=True)

    if not a.no_per_image:
        k = min(a.per_image_n, n)
        slow = ImageTransforms(TRANSFORMS, fast=False)
        x = images[:k].to(a.device)
        slow(x[:10], range(10), key=0)  # warm-up
        per = best_of(a.repeat, lambda: slow(x, range(k), key=1)) / k
        print(
            f"{'c':<4}{'a + the same transforms, called once per image':<58}"
            f"{format(augment_s['a'] + per * n, '.2f') + ' est.':>16}{'':>21}"
        )
        print(
            f"\nrow c = row a + {per * 1e6:.0f} us per image for the two transforms (timed on {k:,}"
            f" images) x {n:,} images"
        )


if __name__ == "__main__":
    main()
