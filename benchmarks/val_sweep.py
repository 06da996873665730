"""Ablations on the validation split: train named variants over several seeds, print mean +- sd and
the difference to the set's first (baseline) row. Tuning happens here, never on the test set.

    python benchmarks/val_sweep.py seed-net --data PATH --seeds 0 1 2 --parallel 12 --device cuda
    python benchmarks/val_sweep.py compact  --data PATH --seeds 0            # on a CPU: one run at
    a time

Each run is `python -m cifarkit train <variant options> --val-split 5000 --seed S`, written to
OUT/<variant>-s<S>; a finished run (results.json present) is read back instead of trained again, so
an interrupted sweep resumes. The score is the final validation accuracy with the recipe's TTA
(results.json's eval_tta_accuracy; runs made before that key existed evaluated their last epoch with
TTA, so there it is the last history row).
On one GPU several runs at once keep it busy (each run alone is bound by Python's per-step
overhead). Results of the sweeps behind README.md's "What each trick buys":
benchmarks/results/val-sweep-h200.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETS: dict[str, list[tuple[str, list[str]]]] = {
    # the default recipe's choices, each changed alone (the first row is the baseline they are
    # compared with)
    "seed-net": [
        ("zeros-pad-bs128", ["--pad-mode", "zeros", "--batch-size", "128", "--lr", "0.2"]),
        ("reflect-pad-bs128", ["--batch-size", "128", "--lr", "0.2"]),
        (
            "label-smoothing-0.3-bs128",
            [
                "--pad-mode",
                "zeros",
                "--batch-size",
                "128",
                "--lr",
                "0.2",
                "--label-smoothing",
                "0.3",
            ],
        ),
        ("bs256-lr0.4-zeros-pad", ["--pad-mode", "zeros"]),
        ("default", []),
        ("default+ls0.3", ["--label-smoothing", "0.3"]),
    ],
    "compact": [
        ("compact", ["--recipe", "compact"]),
        ("no-lookahead", ["--recipe", "compact", "--no-lookahead"]),
        ("no-label-smoothing", ["--recipe", "compact", "--label-smoothing", "0"]),
        ("random-flips", ["--recipe", "compact", "--flip", "random"]),
        ("bn-lr-scale-1", ["--recipe", "compact", "--bias-lr-scale", "1"]),
    ],
}


def final_val(run_dir: Path) -> float | None:
    """The final validation accuracy (with the recipe's TTA) of a finished run, else None."""
    if not (run_dir / "results.json").exists():
        return None
    results = json.loads((run_dir / "results.json").read_text())
    if results.get("eval_tta_accuracy") is not None:
        return results["eval_tta_accuracy"]
    return json.loads((run_dir / "history.json").read_text())[-1]["eval_accuracy"]


def summarize(rows: list[tuple[str, list[float]]]) -> list[str]:
    """Table lines: name, per-seed scores, mean +- sd, difference of the mean to the first row's."""
    base = statistics.mean(rows[0][1]) if rows and rows[0][1] else None
    lines = [f"{'variant':<28} {'runs':<24} {'mean':>6} {'sd':>5} {'vs first':>8}"]
    for name, accs in rows:
        if not accs:
            lines.append(f"{name:<28} {'(no finished run)':<24}")
            continue
        mean = statistics.mean(accs)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        diff = f"{mean - base:+.2f}" if base is not None else ""
        lines.append(
            f"{name:<28} {' '.join(f'{a:.2f}' for a in accs):<24} {mean:6.2f} {sd:5.2f} {diff:>8}"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("set", choices=sorted(SETS))
    ap.add_argument("--data", required=True, help="CIFAR-10 folder or archive")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (GPU: ~8-12; CPU: 1)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--val-split", type=int, default=5000)
    ap.add_argument("--out", default="runs/sweep")
    args = ap.parse_args()
    if not Path(args.data).exists():  # else every run would fail the same way, one log at a time
        ap.error(f"--data {args.data}: no such file or folder")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [
        (name, opts, s)
        for s in args.seeds
        for name, opts in SETS[args.set]
        if final_val(out / f"{name}-s{s}") is None
    ]
    env = dict(os.environ)
    if args.parallel > 1:  # runs sharing the machine: two threads each, unless the caller chose
        env.setdefault("OMP_NUM_THREADS", "2")
    running: list[tuple[str, subprocess.Popen, object]] = []  # (run, process, its open log file)
    while todo or running:
        while todo and len(running) < args.parallel:
            name, opts, s = todo.pop(0)
            run = f"{name}-s{s}"
            cmd = [
                sys.executable,
                "-m",
                "cifarkit",
                "train",
                *opts,
                "--val-split",
                str(args.val_split),
                "--seed",
                str(s),
                "--data",
                args.data,
                "--device",
                args.device,
                "--out",
                str(out / run),
                "--no-progress",
                "--overwrite",
            ]
            log = open(out / f"{run}.log", "w")
            running.append(
                (run, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
            )
            print(f"started {run}: {' '.join(opts) or '(defaults)'}", flush=True)
        for entry in list(running):
            run, proc, log = entry
            if proc.poll() is not None:
                running.remove(entry)
                log.close()
                print(f"{run}: exit {proc.returncode}, val {final_val(out / run)}", flush=True)
        time.sleep(1)

    rows = [
        (name, [a for s in args.seeds if (a := final_val(out / f"{name}-s{s}")) is not None])
        for name, _ in SETS[args.set]
    ]
    print("\n".join(summarize(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
