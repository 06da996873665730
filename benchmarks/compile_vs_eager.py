"""Does torch.compile, or the other memory layout, speed up training here? Training steps side by
side.

    python benchmarks/compile_vs_eager.py [--model seed] [--steps 60]

Same network, optimiser, batch and precision as cifarkit's default path, on random inputs (data
loading is not what is measured): eager in NCHW, eager in channels_last (NHWC), and compiled in the
layout the default path picks ("auto", cifarkit.hardware.choose_channels_last). Prints the compile
time, the layout ratio ``NHWC/NCHW: X.XX`` and the last line ``speedup compiled/eager: X.XX``
(against eager in the same layout).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="seed")
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument(
        "--both",
        action="store_true",
        help="compile in both layouts (default: the auto layout only)",
    )
    ap.add_argument(
        "--epochs", type=int, default=20, help="run length the compile time is counted against"
    )
    args = ap.parse_args()

    from cifarkit.config import TrainConfig
    from cifarkit.hardware import (
        autocast,
        choose_channels_last,
        choose_precision,
        hardware_string,
        keep_freed_memory,
        resolve_device,
    )
    from cifarkit.models import build_model
    from cifarkit.optim import make_optimizer

    cfg = TrainConfig.from_recipe(args.recipe, model=args.model)
    device = resolve_device(cfg.device)
    keep_freed_memory(device)  # as fit does
    amp = choose_precision(cfg.precision, device)[0]
    auto_nhwc, why = choose_channels_last(cfg.channels_last, device, amp)
    y = torch.randint(0, 10, (cfg.batch_size,), device=device)
    print(
        f"{hardware_string(device)}, {cfg.model}, batch {cfg.batch_size},"
        f" {str(amp).replace('torch.', '') if amp else 'fp32'}, {args.steps} timed steps each; auto"
        f" layout: {why}"
    )

    def measure(compiled: bool, nhwc: bool) -> float:
        torch.manual_seed(0)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        x = torch.randn(cfg.batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
        model = build_model(cfg.model).to(device, memory_format=fmt)
        opt = make_optimizer(model, cfg)
        net = torch.compile(model) if compiled else model

        def step():
            with autocast(device, amp):
                loss = F.cross_entropy(net(x).float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        start = time.perf_counter()
        for _ in range(3):
            step()
        warm = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ips = args.steps * cfg.batch_size / (time.perf_counter() - start)
        print(
            f"{'compiled' if compiled else 'eager':>8} {'NHWC' if nhwc else 'NCHW'}: {ips:7.0f}"
            f" img/s (first 3 steps: {warm:.1f} s)",
            flush=True,
        )
        return ips, warm

    eager = {nhwc: measure(False, nhwc) for nhwc in (False, True)}
    print(f"NHWC/NCHW: {eager[True][0] / eager[False][0]:.2f}")
    best_eager = max(eager.values())[0]
    for nhwc in (False, True) if args.both else (auto_nhwc,):
        ips, warm = measure(True, nhwc)
        # the compile (first steps minus what eager steps take) against the time saved over a run
        # of --epochs epochs of 50,000 images, compared with the faster eager layout
        compile_s = warm - 3 * cfg.batch_size / eager[nhwc][0]
        saved_s = args.epochs * 50_000 * (1 / best_eager - 1 / ips)
        print(
            f"compiled {'NHWC' if nhwc else 'NCHW'} / eager {'NHWC' if nhwc else 'NCHW'}: "
            f"{ips / eager[nhwc][0]:.2f}, / best eager: {ips / best_eager:.2f}; "
            f"compile {compile_s:.0f} s, {args.epochs}-epoch run saves {saved_s:.0f} s: "
            f"net {saved_s - compile_s:+.0f} s"
        )
    print(f"speedup compiled/eager: {ips / eager[nhwc][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
