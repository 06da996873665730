"""Training throughput of the seed network (default recipe, batch 256): the classic path, cifarkit's
old eager path and its new path, side by side in one process on the same card and data.

  A   classic: torchvision.datasets.CIFAR10 + PIL transforms (RandomCrop(32, padding=4),
  RandomHorizontalFlip,
      ToTensor, Normalize) + DataLoader(num_workers=2, shuffle=True), fp32, NCHW, SGD(lr 0.01,
      momentum 0.9).
  B   cifarkit, old eager path: uint8 data on the device, batched crop / flip, the "auto" layout
  (channels_last
      where autocast runs bf16 / fp16, NCHW in fp32: cifarkit.hardware.choose_channels_last), the
      default TrainConfig (Nesterov SGD, OneCycle, label smoothing, lookahead), the old "auto"
      precision (bf16 wherever torch.cuda.is_bf16_supported() says so: also on a T4, emulated), the
      unfused optimiser (with fp16 GradScaler then reads the overflow flag on the host every step)
      and a host read of the loss every 20 steps; freed CPU memory kept for reuse, as `fit` keeps it
      (`hardware.keep_freed_memory`; row A runs first, with glibc's defaults).
  C   cifarkit, new path: `choose_precision` (fp16 + scaler on CC 7.x, bf16 on CC >= 8), fused
  optimiser,
      the loss read every `check_every` (50) steps, and the train step replayed as CUDA graphs
      (`prepare_train_model`, cuda_graphs=True). CUDA only: on a CPU the row says N/A.
Optional rows (--rows) split B -> C into its parts: B1 = B with the new precision choice; B2 = B1 +
fused optimiser + loss read every 50 steps (no host sync inside the epoch), eager; C2 = C + compile
(torch.compile mode="reduce-overhead": Inductor kernels as CUDA graphs; compiling can take minutes).

For each row: img/s of the training steps alone (`--steps` timed steps after `--warmup` steps, data
augmentation included), and one epoch of 50,000 images plus the per-epoch test pass over 10,000 test
images (plain, no TTA, as `fit` runs it after every epoch but the last). On a GPU the epoch is real
(the second of two, so tracing / graph recording is counted separately); on a CPU it is estimated
from the step rate, plus the once-per-epoch start (cifarkit augments all images when an epoch
starts; a DataLoader starts its workers), plus a timed test pass (`--epoch real` runs real epochs
there too: minutes per row). CPU numbers swing with other load on the machine: the header prints the
load average.

    python benchmarks/throughput.py                          # synthetic random uint8 images
    (default) python benchmarks/throughput.py --steps 10 --warmup 3    # a CPU run in about a minute
    python benchmarks/throughput.py --data ../shared/data/cifar10-jpg.tar.gz --rows A,B,B1,B2,C
"""

from __future__ import annotations

import argparse
import itertools
import os
import pickle
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# name: (description, old precision choice, fused optimiser, check_every, cuda_graphs, compile)
ENGINE_ROWS = {
    "B": ("cifarkit eager, old path (loss read every 20 steps)", True, False, 20, False, False),
    "B1": ("B + new precision choice", False, False, 20, False, False),
    "B2": ("B1 + fused optimiser + loss read every 50: no sync", False, True, 50, False, False),
    "C": ("cifarkit new: no host sync + CUDA graphs", False, True, 50, True, False),
    "C2": ("C + compile (reduce-overhead)", False, True, 50, True, True),
}


@dataclass
class Row:
    name: str
    path: str
    precision: str = ""
    step_ips: float | None = None  # img/s over the timed training steps
    train_s: float | None = None  # one epoch of training, seconds
    test_s: float | None = None  # the per-epoch test pass, seconds
    estimated: bool = False  # train_s = images / step_ips instead of a real epoch
    note: str = ""  # N/A reason, failure, setup time


def rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync() -> None:
    if torch.cuda.is_available():
        # a GPU runs queued work asynchronously: time it only once it is done
        torch.cuda.synchronize()


def forever(loader):
    """Batches of `loader`, starting over when it ends (for step counts beyond one epoch)."""
    while True:
        yield from loader


class Take:
    """The next `n` batches of the iterator `batches`, with a length for `train_one_epoch`."""

    def __init__(self, batches, n: int):
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return itertools.islice(self.batches, self.n)


def epoch_start_seconds(loader) -> float:
    """Time to the first batch of a fresh epoch: work done once per epoch, before any step
    (cifarkit's loader augments all images at once; a DataLoader starts its workers). The timed
    steps continue one iterator, so an estimated epoch adds this."""
    start = time.perf_counter()
    next(iter(loader))
    sync()
    return time.perf_counter() - start


def synthetic_cifar10(n_train: int, n_test: int):
    """Random uint8 images and labels of CIFAR-10's shapes: throughput does not depend on the
    pixels."""
    from cifarkit.data.dataset import Cifar10

    g = torch.Generator().manual_seed(0)
    img = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # noqa: E731
    return Cifar10(
        img(n_train),
        torch.arange(n_train) % 10,
        img(n_test),
        torch.arange(n_test) % 10,
        source="synthetic",
    )


def old_auto_precision(device: torch.device) -> torch.dtype | None:
    """cifarkit's "auto" before choose_precision: bf16 where torch.cuda.is_bf16_supported(), which
    counts emulation and so also says True on a T4 (pytorch/pytorch#148322)."""
    from cifarkit.hardware import choose_precision

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return choose_precision("auto", device)[0]


def unfused(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimiser and groups with torch's default (foreach) kernels, as cifarkit built it
    before."""
    groups = [{k: v for k, v in g.items() if k != "fused"} for g in opt.param_groups]
    return type(opt)(groups)


def dtype_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16+scaler", None: "fp32"}[dtype]


def engine_row(name: str, cfg, data, device: torch.device, args) -> Row:
    """Rows B..C2: cifarkit's own loop (`train_one_epoch`) with the row's settings."""
    from cifarkit.compiled import prepare_train_model
    from cifarkit.data.loader import DeviceLoader
    from cifarkit.hardware import choose_channels_last, choose_precision, keep_freed_memory
    from cifarkit.models import build_model
    from cifarkit.optim import Lookahead, make_optimizer, make_scheduler
    from cifarkit.training.evaluate import evaluate
    from cifarkit.training.step import TrainStep, train_one_epoch

    path, old_precision, fused, check_every, graphs, compile_ = ENGINE_ROWS[name]
    if (graphs or fused) and device.type != "cuda":
        why = "CUDA graphs are CUDA-only" if graphs else "fused optimiser is used on CUDA only"
        same = (
            "; a CPU reads the loss every step anyway, so this is row B"
            if device.type == "cpu"
            else ""
        )
        return Row(name, path, note=f"N/A on {device.type}: {why}{same}")
    amp = (
        old_auto_precision(device) if old_precision else choose_precision(cfg.precision, device)[0]
    )
    keep_freed_memory(device)  # as fit does
    torch.manual_seed(0)
    model = build_model("seed", dropout=cfg.dropout).to(device)
    # the run's "auto" layout: on a CPU measured with this network, as fit does (hardware.py)
    nhwc = choose_channels_last(cfg.channels_last, device, amp, model=model, batch=64)[0]
    model = model.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    loader = DeviceLoader(
        data.train_images,
        data.train_labels,
        cfg.batch_size,
        train=True,
        device=device,
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        pad_mode=cfg.pad_mode,
        cutout=cfg.cutout,
        channels_last=nhwc,
        seed=0,
    )
    test_loader = DeviceLoader(
        data.test_images,
        data.test_labels,
        cfg.eval_batch_size,
        train=False,
        device=device,
        channels_last=nhwc,
    )
    opt = make_optimizer(model, cfg)
    opt = opt if fused else unfused(opt)
    sched = make_scheduler(opt, cfg, len(loader))
    lookahead = Lookahead(cfg.epochs * len(loader)) if cfg.lookahead else None
    step = TrainStep(
        prepare_train_model(model, device=device, cuda_graphs=graphs, compile=compile_),
        opt,
        amp,
        cfg.label_smoothing,
        sched,
        lookahead,
    )

    def train(batches, epoch: int = 0) -> dict:
        return train_one_epoch(step, batches, epoch=epoch, progress=False, check_every=check_every)

    def test() -> float:
        if lookahead is not None:
            lookahead.sync(model)  # as fit does before each evaluation
        return evaluate(model, test_loader, amp_dtype=amp, tta="none", verbose=False)["seconds"]

    row = Row(name, path, f"{dtype_name(amp)} {'NHWC' if nhwc else 'NCHW'}")
    batches = forever(loader)  # one iterator: the timed steps do not restart the epoch
    start = time.perf_counter()
    # also traces / records the CUDA graphs of the full-batch shape
    train(Take(batches, args.warmup))
    setup = time.perf_counter() - start
    if args.sync_debug and device.type == "cuda":  # warn at every host sync inside the timed steps
        torch.cuda.set_sync_debug_mode("warn")
    try:
        row.step_ips = train(Take(batches, args.steps))["images_per_second"]
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    del batches
    if real_epoch(args, device):
        seconds = []
        for epoch in range(2):  # the first epoch also records the graphs of the last, smaller batch
            loader.set_epoch(epoch)
            tr = train(loader, epoch)
            seconds.append((tr["seconds"], test()))
        (t1, e1), (row.train_s, row.test_s) = seconds
        row.note = f"first epoch {t1 + e1:.1f} s; warm-up {args.warmup} steps {setup:.1f} s"
    else:
        # warm the kernels' caches
        evaluate(model, Take(iter(test_loader), 1), amp_dtype=amp, verbose=False)
        row.train_s = epoch_start_seconds(loader) + len(data.train_labels) / row.step_ips
        row.test_s, row.estimated = test(), True
    if (graphs or compile_) and not getattr(step.model, "active", False):
        row.note = f"FELL BACK TO EAGER (see the line above); {row.note}".rstrip("; ")
    return row


def real_epoch(args, device: torch.device) -> bool:
    return args.epoch == "real" or (args.epoch == "auto" and device.type == "cuda")


def write_batches(data, folder: Path) -> None:
    """Write the arrays as torchvision's cifar-10-batches-py pickles (rows of 3,072 channel-planar
    bytes, i.e. (3, 32, 32) flattened, as in the real download), so row A uses the real torchvision
    class.
    """
    folder.mkdir(parents=True)
    train_x, n = (
        data.train_images.reshape(len(data.train_labels), -1).numpy(),
        len(data.train_labels),
    )
    per = -(-n // 5)
    for i in range(5):
        sl = slice(i * per, (i + 1) * per)
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": train_x[sl], "labels": data.train_labels[sl].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(
            {
                "data": data.test_images.reshape(len(data.test_labels), -1).numpy(),
                "labels": data.test_labels.tolist(),
            },
            f,
        )


def classic_loaders(root: Path, batch_size: int, workers: int):
    from torchvision import datasets, transforms

    from cifarkit.base import CIFAR10_MEAN, CIFAR10_STD, CLASSES

    class LocalCIFAR10(datasets.CIFAR10):
        # our re-written pickles have other md5s than the download
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:  # same reason: skip the md5 check of batches.meta
            self.classes = list(CLASSES)
            self.class_to_idx = {c: i for i, c in enumerate(CLASSES)}

    norm = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    train = LocalCIFAR10(str(root), train=True, transform=train_tf)
    test = LocalCIFAR10(
        str(root), train=False, transform=transforms.Compose([transforms.ToTensor(), norm])
    )
    return (
        torch.utils.data.DataLoader(
            train, batch_size=batch_size, shuffle=True, num_workers=workers
        ),
        torch.utils.data.DataLoader(
            test, batch_size=batch_size, shuffle=False, num_workers=workers
        ),
    )


def classic_row(cfg, data, device: torch.device, args) -> Row:
    """Row A: the course-template loop, fp32, data prepared per image by PIL in DataLoader
    workers."""
    from cifarkit.models import build_model

    row = Row("A", f"classic: torchvision + DataLoader({args.workers} workers)", "fp32 NCHW")
    with tempfile.TemporaryDirectory() as tmp:
        write_batches(data, Path(tmp) / "cifar-10-batches-py")
        train_dl, test_dl = classic_loaders(Path(tmp), cfg.batch_size, args.workers)
        torch.manual_seed(0)
        model = build_model("seed").to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(x, y):
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        model.train()
        batches = forever(train_dl)
        for _ in range(args.warmup):
            step(*next(batches))
        sync()
        n, start = 0, time.perf_counter()
        for _ in range(args.steps):
            x, y = next(batches)
            step(x, y)
            n += len(y)
        sync()
        row.step_ips = n / (time.perf_counter() - start)
        del batches  # shut its workers down before the epoch starts its own
        if real_epoch(args, device):
            start = time.perf_counter()
            for x, y in train_dl:
                step(x, y)
            sync()
            row.train_s = time.perf_counter() - start
        else:
            row.train_s = epoch_start_seconds(train_dl) + len(data.train_labels) / row.step_ips
            row.estimated = True
        start = time.perf_counter()
        model.eval()
        with torch.inference_mode():
            for x, _ in test_dl:
                model(x.to(device))
        sync()
        row.test_s = time.perf_counter() - start
    return row


def format_row(r: Row, n_train: int) -> str:
    head = f"{r.name:<3} {r.path:<54} {r.precision:<17}"
    if r.step_ips is None:
        return f"{head} {r.note}"
    total = r.train_s + r.test_s
    epoch = (
        f"{r.train_s:6.1f} + {r.test_s:5.1f} = {total:6.1f}{' est.' if r.estimated else '     '}"
    )
    return f"{head} {r.step_ips:10.1f}   {epoch} {n_train / total:9.0f}  {r.note}".rstrip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data", help="CIFAR-10 folder or archive (see cifarkit.load_cifar10); default: synthetic"
    )
    ap.add_argument(
        "--steps", type=int, default=100, help="timed training steps per row (batch 256)"
    )
    ap.add_argument(
        "--warmup", type=int, default=10, help="untimed steps first (tracing, graph recording)"
    )
    ap.add_argument(
        "--epoch",
        choices=("auto", "real", "estimate"),
        default="auto",
        help="auto: a real epoch on a GPU, estimated from the step rate on a CPU",
    )
    ap.add_argument(
        "--rows", default="A,B,C", help=f"comma-separated, from A,{','.join(ENGINE_ROWS)}"
    )
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of row A")
    ap.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda")
    ap.add_argument(
        "--sync-debug",
        action="store_true",
        help=(
            "CUDA: warn at each host sync in the timed steps "
            "(expected in C: only the loss reads every check_every steps and at the last step)"
        ),
    )
    ap.add_argument(
        "--train-images", type=int, default=50_000, help="synthetic data: training images"
    )
    ap.add_argument("--test-images", type=int, default=10_000, help="synthetic data: test images")
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r != "A" and r not in ENGINE_ROWS]
    if unknown:
        ap.error(f"unknown row(s) {', '.join(unknown)}")

    from cifarkit.config import TrainConfig
    from cifarkit.data.sources import load_cifar10
    from cifarkit.hardware import (
        choose_channels_last,
        choose_precision,
        hardware_string,
        resolve_device,
    )

    cfg = TrainConfig(progress=False, device=args.device)
    device = resolve_device(cfg.device)
    data = (
        load_cifar10(args.data, progress=False)
        if args.data
        else synthetic_cifar10(args.train_images, args.test_images)
    )
    n_train = len(data.train_labels)
    load = (
        f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        if hasattr(os, "getloadavg")
        else ""
    )
    print(
        f"hardware: {hardware_string(device)}; torch {torch.__version__}; data:"
        f" {data.source or args.data} ({n_train} train / {len(data.test_labels)} test images){load}"
    )
    amp, reason = choose_precision(cfg.precision, device)
    from cifarkit.models import build_model

    layout = choose_channels_last(
        cfg.channels_last, device, amp, model=build_model("seed").to(device), batch=64
    )[1]
    print(
        f"seed network, default recipe, batch {cfg.batch_size}; {args.steps} timed steps after"
        f" {args.warmup} warm-up steps per row; new precision: {reason}; layout: {layout}"
    )
    print(
        f"{'row':<3} {'path':<54} {'precision layout':<17} {'step img/s':>10}   "
        f"{'epoch s: train + test = total':<31} {'epoch img/s':>9}"
    )
    results = {}
    # A first: with glibc's malloc defaults, as a classic script runs; cifarkit's rows then keep
    # freed memory for reuse (hardware.keep_freed_memory), a setting of the whole process
    for name in (["A"] if "A" in rows else []) + [r for r in rows if r != "A"]:
        try:
            row = (
                classic_row(cfg, data, device, args)
                if name == "A"
                else engine_row(name, cfg, data, device, args)
            )
        except Exception as e:  # noqa: BLE001 - report the row and measure the others
            path = "classic" if name == "A" else ENGINE_ROWS[name][0]
            row = Row(
                name,
                path,
                note=f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            )
        results[name] = row
        print(format_row(row, n_train), flush=True)
    print(f"peak RSS: {rss_mb():.0f} MB")
    done = {k: r for k, r in results.items() if r.step_ips is not None}
    for new, old in (("C", "B"), ("C", "A"), ("B", "A")):
        if new in done and old in done:
            a, b = done[old], done[new]
            print(
                f"speedup {new}/{old}: steps {b.step_ips / a.step_ips:.2f}x, epoch incl. test "
                f"{(a.train_s + a.test_s) / (b.train_s + b.test_s):.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
