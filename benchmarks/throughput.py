"""Training throughput of the seed network: the classic PyTorch path (A) vs cifarkit's default path (B).

Both run in this one process on the same data, for the same number of steps of 128 images after a warm-up:
  A  torchvision.datasets.CIFAR10 + PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip,
     ToTensor, Normalize) + DataLoader(batch_size=128, num_workers=2, shuffle=True), fp32, NCHW, SGD.
  B  cifarkit: uint8 dataset on the device, batched crop / flip, bf16 autocast where the CPU has native
     bf16 (AMX or AVX-512-BF16), channels_last, the default TrainConfig (Nesterov SGD, OneCycle).
Then B runs one real full epoch (50,000 images) plus its test pass, and A's full epoch is estimated from
its throughput and a timed test pass. The last line reads ``speedup B/A: X.XX``.

    python benchmarks/throughput.py --data ../shared/data/cifar10-jpg.tar.gz
"""
from __future__ import annotations

import argparse
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_batches(data, folder: Path) -> None:
    """Write the arrays as torchvision's cifar-10-batches-py pickles, so path A uses the real class."""
    folder.mkdir(parents=True)
    train_x = data.train_images.permute(0, 2, 3, 1).reshape(len(data.train_labels), -1).numpy()
    for i in range(5):
        sl = slice(i * 10000, (i + 1) * 10000)
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": train_x[sl], "labels": data.train_labels[sl].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data.test_images.permute(0, 2, 3, 1).reshape(10000, -1).numpy(),
                     "labels": data.test_labels.tolist()}, f)


def classic_loaders(root: Path, batch_size: int):
    from torchvision import datasets, transforms

    from cifarkit import CIFAR10_MEAN, CIFAR10_STD, CLASSES

    class LocalCIFAR10(datasets.CIFAR10):
        def _check_integrity(self) -> bool:  # our re-written pickles have other md5s than the download
            return True

        def _load_meta(self) -> None:  # same reason: skip the md5 check of batches.meta
            self.classes = list(CLASSES)
            self.class_to_idx = {c: i for i, c in enumerate(CLASSES)}

    norm = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    train = LocalCIFAR10(str(root), train=True, transform=train_tf)
    test = LocalCIFAR10(str(root), train=False, transform=transforms.Compose([transforms.ToTensor(), norm]))
    return (torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=2),
            torch.utils.data.DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=2))


def time_steps(step, batches, warmup: int, steps: int) -> float:
    """Run `warmup` then `steps` steps over the iterator `batches`; images per second of the timed part."""
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    sync()
    n, start = 0, time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        step(x, y)
        n += len(y)
    sync()  # a GPU runs the queued steps asynchronously: count them only once they are done
    return n / (time.perf_counter() - start)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 folder or archive (see cifarkit.load_cifar10)")
    ap.add_argument("--steps", type=int, default=100, help="timed steps of 128 images per path")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-full-epoch", action="store_true", help="skip B's real full epoch")
    args = ap.parse_args()

    from cifarkit import (DeviceLoader, TrainConfig, create_model, evaluate, load_cifar10, make_optimizer,
                          make_scheduler, resolve_device, resolve_precision, train_one_epoch)
    from cifarkit.engine import autocast
    from cifarkit.trainer import hardware_string

    cfg = TrainConfig(progress=False)
    device = resolve_device(cfg.device)
    amp = resolve_precision(cfg.precision, device)
    data = load_cifar10(args.data, progress=False)
    print(f"hardware: {hardware_string(device)}; torch {torch.__version__}; B precision: "
          f"{str(amp).replace('torch.', '') if amp else 'fp32'}; {args.steps} timed steps of 128 images per path")
    bs = 128

    # ---- B: cifarkit default path
    torch.manual_seed(0)
    model = create_model("seed", dropout=cfg.dropout).to(device, memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, 391)

    def step_b(x, y):
        with autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    loader = DeviceLoader(data.train_images, data.train_labels, bs, train=True, device=device, channels_last=True)
    model.train()
    ips_b = time_steps(step_b, loader, args.warmup, args.steps)
    print(f"B cifarkit: {ips_b:8.1f} img/s  (peak RSS so far {rss_mb():.0f} MB)")

    epoch_b = None
    if not args.no_full_epoch:
        test_loader = DeviceLoader(data.test_images, data.test_labels, cfg.eval_batch_size, train=False,
                                   device=device, channels_last=True)
        tr = train_one_epoch(model, loader, opt, sched, amp_dtype=amp, label_smoothing=cfg.label_smoothing,
                             progress=False)
        # The per-epoch test pass, as fit runs it on every epoch but the last (which adds cfg.tta).
        ev = evaluate(model, test_loader, amp_dtype=amp, tta="none", verbose=False)
        epoch_b = tr["seconds"] + ev["seconds"]
        print(f"B full epoch: {tr['seconds']:.1f} s train ({tr['images_per_second']:.0f} img/s) + {ev['seconds']:.1f} s "
              f"test = {epoch_b:.1f} s  (peak RSS {rss_mb():.0f} MB)")
    del loader

    # ---- A: classic path
    with tempfile.TemporaryDirectory() as tmp:
        write_batches(data, Path(tmp) / "cifar-10-batches-py")
        train_dl, test_dl = classic_loaders(Path(tmp), bs)
        torch.manual_seed(0)
        model_a = create_model("seed").to(device)
        opt_a = torch.optim.SGD(model_a.parameters(), lr=0.01, momentum=0.9)

        def step_a(x, y):
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model_a(x), y)
            opt_a.zero_grad(set_to_none=True)
            loss.backward()
            opt_a.step()

        model_a.train()
        ips_a = time_steps(step_a, train_dl, args.warmup, args.steps)
        print(f"A classic:  {ips_a:8.1f} img/s  (peak RSS so far {rss_mb():.0f} MB, workers not included)")
        start = time.perf_counter()
        model_a.eval()
        with torch.inference_mode():
            for x, _ in test_dl:
                model_a(x.to(device))
        test_a = time.perf_counter() - start
    epoch_a = 50000 / ips_a + test_a
    print(f"A full epoch (estimated): {50000 / ips_a:.1f} s train + {test_a:.1f} s test = {epoch_a:.1f} s")
    if epoch_b is not None:
        print(f"epoch time B vs A: {epoch_b:.1f} s vs {epoch_a:.1f} s ({epoch_a / epoch_b:.2f}x)")
    print(f"peak RSS: {rss_mb():.0f} MB")
    print(f"speedup B/A: {ips_b / ips_a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
