"""Which CPU settings speed up the default training step: batch size, threads, a frozen test pass?

    python benchmarks/cpu_knobs.py [--model seed] [--steps 8] [--rounds 3]

Eager training steps (`training.step.TrainStep`, as `fit` runs them) of the network in the layout
and precision cifarkit's "auto" picks on this machine, on random inputs (data loading is not
measured), with the default optimiser and loss. Each variant runs `--rounds` times, the rounds
interleaved (A B C A B C ...) so that a drift of the machine's speed hits every variant alike; the
median is printed with its ratio to the first row:

- batch 256 (the default), 128, 64 and 512: images per second of training steps. Another batch size
  is another recipe (steps per epoch, BatchNorm statistics, the learning rate that suits it), so a
  gain here is not one "auto" may take on its own;
- 1 thread instead of torch's default (one per core);
- the test pass: eager eval forwards, and the same network traced and frozen by TorchScript
  (`torch.jit.freeze`, which folds BatchNorm into a convolution it directly follows and fuses
  conv + ReLU where oneDNN can).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="seed")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
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
    from cifarkit.training.step import TrainStep

    cfg = TrainConfig(model=args.model)
    device = resolve_device("cpu")
    keep_freed_memory(device)  # as fit does
    amp, why_amp = choose_precision(cfg.precision, device)
    nhwc, why_layout = choose_channels_last(cfg.channels_last, device, amp)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    threads = torch.get_num_threads()
    print(f"{hardware_string(device)}; torch {torch.__version__}; {args.model}")
    print(f"precision: {why_amp}; layout: {why_layout}")
    print(f"{args.rounds} interleaved rounds of {args.steps} steps per variant; median img/s")

    def train_rate(batch: int, n_threads: int):
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device, memory_format=fmt)
        train_step = TrainStep(model, make_optimizer(model, cfg), amp, cfg.label_smoothing)
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (batch,))

        def step():
            train_step.backward(x, y)
            train_step.update()

        def run() -> float:
            torch.set_num_threads(n_threads)
            try:
                step()  # warm: this shape's kernels chosen
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                return args.steps * batch / (time.perf_counter() - start)
            finally:
                torch.set_num_threads(threads)

        return run

    def eval_rate(frozen: bool):
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device, memory_format=fmt).eval().requires_grad_(False)
        x = torch.randn(cfg.eval_batch_size, 3, 32, 32).contiguous(memory_format=fmt)
        # traced under autocast without its weight cache: cached casts cannot become constants
        tracing = torch.autocast(device.type, amp, enabled=amp is not None, cache_enabled=False)
        with torch.no_grad(), tracing:
            net = torch.jit.freeze(torch.jit.trace(model, x)) if frozen else model

        def run() -> float:
            with torch.no_grad(), autocast(device, amp):
                net(x)
                start = time.perf_counter()
                for _ in range(max(2, args.steps // 4)):
                    net(x)
                return max(2, args.steps // 4) * len(x) / (time.perf_counter() - start)

        return run

    variants = [
        ("train, batch 256 (default)", train_rate(256, threads)),
        ("train, batch 128", train_rate(128, threads)),
        ("train, batch 64", train_rate(64, threads)),
        ("train, batch 512", train_rate(512, threads)),
        (f"train, batch 256, 1 thread (default {threads})", train_rate(256, 1)),
        (f"test pass, eager (batch {cfg.eval_batch_size})", eval_rate(False)),
        ("test pass, TorchScript frozen", eval_rate(True)),
    ]
    rates: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(args.rounds):
        for name, run in variants:
            rates[name].append(run())
    base = {"train": None, "test": None}
    for name, _ in variants:
        med = statistics.median(rates[name])
        kind = name.split(",")[0].split()[0]
        base[kind] = base[kind] or med
        spread = f"{min(rates[name]):.0f}-{max(rates[name]):.0f}"
        print(f"{name:<46} {med:7.0f} img/s ({spread})  x{med / base[kind]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
