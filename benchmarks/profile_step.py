"""Where a training step's time goes: torch.profiler over real steps of cifarkit's default path.

    python benchmarks/profile_step.py --data ../shared/data/cifar10-jpg.tar.gz [--model seed]
    [--steps 20]

Prints (1) the ops by self CPU time, (2) the convolutions grouped by input shape, (3) achieved conv
throughput in GFLOP/s against the total step time. The summary of one run is in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile


def conv_macs(model: torch.nn.Module) -> int:
    """Multiply-accumulates of every conv / linear layer for one 32x32 image (forward)."""
    total = 0
    hooks = []

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += (
                out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            )
        elif isinstance(m, torch.nn.Linear):
            total += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="seed")
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    from cifarkit.config import TrainConfig
    from cifarkit.data.loader import DeviceLoader
    from cifarkit.data.sources import load_cifar10
    from cifarkit.hardware import (
        choose_precision,
        hardware_string,
        keep_freed_memory,
        resolve_device,
    )
    from cifarkit.models import build_model
    from cifarkit.optim import make_optimizer
    from cifarkit.training.step import TrainStep, train_one_epoch

    cfg = TrainConfig.from_recipe(args.recipe, model=args.model, progress=False)
    device = resolve_device(cfg.device)
    keep_freed_memory(device)  # as fit does
    amp = choose_precision(cfg.precision, device)[0]
    data = load_cifar10(args.data, progress=False)
    model = build_model(cfg.model)
    macs = conv_macs(model)
    model = model.to(device, memory_format=torch.channels_last)
    n = cfg.batch_size * args.steps
    loader = DeviceLoader(
        data.train_images[:n],
        data.train_labels[:n],
        cfg.batch_size,
        train=True,
        device=device,
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        pad_mode=cfg.pad_mode,
        channels_last=True,
    )
    opt = make_optimizer(model, cfg)
    step = TrainStep(model, opt, amp, cfg.label_smoothing)
    run = lambda: train_one_epoch(step, loader, progress=False)  # noqa: E731
    run()  # warm-up: oneDNN picks and caches its kernels on first use
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        r = run()
    wall = time.perf_counter() - start
    print(
        f"{hardware_string(device)}, {cfg.model}, batch {cfg.batch_size},"
        f" {str(amp).replace('torch.', '') if amp else 'fp32'}, {args.steps} steps,"
        f" {r['images_per_second']:.0f} img/s"
    )
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    conv = (
        sum(
            e.self_cpu_time_total
            for e in events
            if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward")
        )
        / 1e6
    )
    flops = 6 * macs * n  # forward 2 FLOP per MAC; backward twice the forward
    print(
        f"conv/linear work: {macs / 1e6:.1f} M MACs per image forward = {flops / 1e9:.1f} GFLOP for"
        f" {n} images forward + backward"
    )
    print(
        f"time in conv kernels: {conv:.2f} s of {wall:.2f} s ({100 * conv / wall:.0f}%) ->"
        f" {flops / conv / 1e9:.0f} GFLOP/s inside convs, {flops / wall / 1e9:.0f} GFLOP/s over the"
        " whole step"
    )
    grouped = prof.key_averages(group_by_input_shape=True)
    rows = sorted(
        (e for e in grouped if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward")),
        key=lambda e: -e.self_cpu_time_total,
    )
    print("\nconvolutions by input shape (ms per step):")
    for e in rows[:12]:
        print(
            f"  {e.key:<28} {e.self_cpu_time_total / 1e3 / args.steps:7.2f} "
            f" {str(e.input_shapes[:2])[:80]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
