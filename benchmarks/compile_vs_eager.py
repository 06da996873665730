"""Does torch.compile speed up training here? Eager vs compiled training steps, side by side in one run.

    python benchmarks/compile_vs_eager.py [--model seed] [--steps 60]

Same network, optimiser, batch, precision and layout as cifarkit's default path, on random inputs (data
loading is not what is measured). Prints the compile time and the last line ``speedup compiled/eager: X.XX``.
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
    args = ap.parse_args()

    from cifarkit import TrainConfig, create_model, make_optimizer, resolve_device, resolve_precision
    from cifarkit.engine import autocast
    from cifarkit.trainer import hardware_string

    cfg = TrainConfig.from_recipe(args.recipe, model=args.model)
    device = resolve_device(cfg.device)
    amp = resolve_precision(cfg.precision, device)
    x = torch.randn(cfg.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg.batch_size,), device=device)
    print(f"{hardware_string(device)}, {cfg.model}, batch {cfg.batch_size}, "
          f"{str(amp).replace('torch.', '') if amp else 'fp32'}, {args.steps} timed steps each")

    def measure(compiled: bool) -> float:
        torch.manual_seed(0)
        model = create_model(cfg.model).to(device, memory_format=torch.channels_last)
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
        print(f"{'compiled' if compiled else 'eager':>8}: {ips:7.0f} img/s (first 3 steps: {warm:.1f} s)")
        return ips

    eager = measure(False)
    compiled = measure(True)
    print(f"speedup compiled/eager: {compiled / eager:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
