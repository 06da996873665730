"""Measured training time per epoch, by device kind: what a student sees before a run starts.

One table, `MEASURED`, holds every seconds-per-epoch figure the project has measured for the
Assignment 7 network with the default recipe (batch 256, 50,000 training images, plus the per-epoch
test pass), each with where it came from. `epoch_estimate` finds the row for the device a run will
use and says how long the run will take, or that this device was never measured. The notebook prints
it before training, and docs/speed.md shows the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import plural
from .hardware import cpu_kind

TRAIN_IMAGES = 50_000  # the training images an epoch of every MEASURED row trains on


@dataclass(frozen=True)
class Measured:
    """Seconds per epoch (training + the per-epoch test pass) on one kind of device."""

    kind: str  # what `device_kind` returns for such a device: "cpu:AVX2", "cuda:H200", ...
    seconds: float  # per epoch, training + test pass, default recipe, Assignment 7 network
    device: str  # the machine, in words
    precision: str  # what "auto" chose there
    source: str  # the command / run that measured it
    path: str = (
        "eager"  # the training path: "eager" (the default) or "cuda_graphs" (cuda_graphs=True)
    )


MEASURED: tuple[Measured, ...] = (
    Measured(
        "cpu:AMX-BF16",
        30.6,
        "2-core Intel Xeon (Sapphire Rapids, AMX)",
        "bf16",
        "benchmarks/throughput.py row B, 2026-12-03: 29.3 s train + 1.3 s test (estimated from the"
        " step rate), freed memory kept for reuse (38.5 s before that, 2026-11-26)",
    ),
    Measured(
        "cpu:AVX-512-BF16",
        43.0,
        "2-core AMD EPYC Zen 4 (AVX-512-BF16)",
        "bf16",
        "checkpoints/seed-net-s0/results.json: 20 epochs in 860 s wall (before freed memory was"
        " kept for reuse, which made the epoch 1.26x faster on a Sapphire Rapids)",
    ),
    Measured(
        "cpu:AVX-512-BF16",
        24.3,
        "2-core AMD EPYC Zen 5 (AVX-512-BF16)",
        "bf16",
        "the notebook's run of 86aa541 (git show 86aa541:checkpoints/notebook/history.json): 20"
        " epochs on 2026-12-04, median 24.3 s (22.6-28.6 s), freed memory kept for reuse",
    ),
    Measured(
        "cpu:AVX2",
        100.5,
        "2-core AMD EPYC Zen 3 (AVX2, no native bf16)",
        "fp32",
        "benchmarks/throughput.py row B, 2026-12-01: 93.1 s train + 7.4 s test (estimated from the"
        " step rate, channels_last as measured there; before freed memory was kept for reuse, which"
        " made the epoch 1.19x faster on a Sapphire Rapids held to AVX2 and fp32)",
    ),
    Measured(
        "cuda:H200",
        1.1,
        "NVIDIA H200",
        "bf16",
        "2026-12-04, torch 2.11: benchmarks/throughput.py row B2 (eager, channels_last, 39,351"
        " img/s steps) and the notebook's 20 epochs (median 1.1 s, 0.9-2.2 s); before"
        " deterministic cuDNN (benchmark off) became the default",
    ),
    Measured(
        "cuda:H200",
        0.7,
        "NVIDIA H200",
        "bf16",
        "2026-12-04, torch 2.11: benchmarks/throughput.py row C (cuda_graphs=True, 73,697 img/s"
        " steps); before deterministic cuDNN (benchmark off) became the default",
        path="cuda_graphs",
    ),
)


def device_kind(device: torch.device) -> str:
    """The key of `MEASURED` for `device`: "cpu:<vector unit>" or "cuda:<card model>" (e.g.
    "cuda:T4")."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        model = name.replace("NVIDIA", "").replace("Tesla", "").split()
        return f"cuda:{model[0] if model else name}"
    if device.type == "cpu":
        return f"cpu:{cpu_kind()}"
    return device.type


def measured_for(device: torch.device, path: str = "eager") -> list[Measured]:
    """The measurements for this kind of device and training path, fastest first (several where
    machines of one kind were measured, e.g. a Zen 4 and a Zen 5 with AVX-512-BF16); never another
    device's or path's."""
    kind = device_kind(device)
    return sorted(
        (m for m in MEASURED if m.kind == kind and m.path == path), key=lambda m: m.seconds
    )


def _span(values: list[float], unit: str = "s") -> str:
    """ "24 s" or "24-43 s": one number, or the range of several."""
    lo, hi = f"{min(values):.0f}", f"{max(values):.0f}"
    return f"{lo} {unit}" if lo == hi else f"{lo}-{hi} {unit}"


def epoch_estimate(
    device: torch.device,
    epochs: int,
    *,
    model: Any = "seed",
    threads: int | None = None,
    path: str = "eager",
    train_images: int | None = None,
) -> str:
    """One line: how long `epochs` epochs take on `device`, from `MEASURED`, with the source (a
    range, each machine named, where machines of this kind differ); or that this device was never
    measured. A CPU with other than 2 threads, or a network other than the registered "seed" (a
    name, or the network object or class a run is given), gets a caution (the figures are for 2
    threads and the Assignment 7 network). `train_images`: the images an epoch trains on (None: all
    50,000); with far fewer the figures do not apply, and the line says so instead of a total."""
    rows = measured_for(device, path)
    if not rows:
        how = "" if path == "eager" else f" with {path}"
        return (
            f"time per epoch: not measured on this device{how} ({device_kind(device)}); run a short"
            " version first (epochs=1, limit_train=5000) and multiply"
        )
    if train_images is not None and train_images < 0.9 * TRAIN_IMAGES:
        return (
            f"time per epoch: {_span([m.seconds for m in rows])} on this kind of device"
            f" ({device_kind(device)}) for all {TRAIN_IMAGES:,} training images (docs/speed.md);"
            f" this run trains on {plural(train_images, 'image')} per epoch, so those figures do"
            " not apply: its epochs will be shorter"
        )
    totals = [m.seconds * epochs for m in rows]
    when = _span([t / 60 for t in totals], "min") if max(totals) >= 90 else _span(totals)
    notes = []
    threads = threads if threads is not None else torch.get_num_threads()
    if device_kind(device).startswith("cpu:") and threads != 2:
        notes.append(f"measured with 2 threads, this process has {threads}")
    if not (isinstance(model, str) and model == "seed"):
        notes.append("measured for the Assignment 7 network; yours may differ")
    caution = f" ({'; '.join(notes)})" if notes else ""
    total = f"so {plural(epochs, 'epoch')} take{'s' * (epochs == 1)} about {when}{caution}"
    if len(rows) == 1:
        m = rows[0]
        return (
            f"time per epoch: about {m.seconds:.0f} s on a {m.device} in {m.precision}, {total};"
            f" source: {m.source}"
        )
    return (
        f"time per epoch: {_span([m.seconds for m in rows])} on this kind of device"
        f" ({device_kind(device)}), measured on {len(rows)} machines: "
        + ", ".join(f"{m.seconds:.0f} s on a {m.device} in {m.precision}" for m in rows)
        + f"; {total}; sources (docs/speed.md): "
        + ", ".join(m.source.split(": ")[0] for m in rows)
    )


def timing_report(
    history: list[dict], final: dict, device: torch.device, path: str = "eager"
) -> str:
    """How long the run's epochs took (training + test pass, from its history), how much they
    varied (no cause is named: the run does not measure what else ran), and how that compares with
    the estimate `epoch_estimate` printed before training for this device and path."""
    secs = [h["train_seconds"] + h["eval_seconds"] for h in history]
    later = sorted(secs[1:]) or secs
    median = later[len(later) // 2]
    lines = [
        f"epochs: {min(secs):.1f}-{max(secs):.1f} s, median {median:.1f} s; all {len(secs)} epochs"
        f" {sum(secs) / 60:.1f} min; the whole run incl. the final test"
        f" {final['wall_seconds'] / 60:.1f} min on {final['hardware']}"
    ]
    if len(secs) > 1 and secs[0] > 1.3 * median:
        lines.append(
            f"epoch 1 took {secs[0]:.1f} s, {secs[0] / median:.1f}x the median: it includes the"
            " one-time set-up of the first steps (kernel selection, memory allocation)"
        )
    if len(later) > 1 and later[-1] > 1.3 * later[0]:
        lines.append(
            f"epochs 2-{len(secs)} took {later[0]:.1f} to {later[-1]:.1f} s"
            f" ({later[-1] / later[0]:.1f}x) for the same work; the run does not measure what else"
            " the machine did meanwhile, so it names no cause"
        )
    rows = measured_for(device, path)
    estimate = "; ".join(f"{m.seconds:.1f} s per epoch ({m.device})" for m in rows)
    # per epoch
    images = history[-1].get("images_per_second", 0) * history[-1].get("train_seconds", 0)
    if not rows:
        lines.append("no estimate was printed before training: this device was never measured")
    elif images < 0.9 * TRAIN_IMAGES:
        lines.append(
            f"the estimate before training ({estimate}) is for {TRAIN_IMAGES:,} training images;"
            f" this run trained on {images:,.0f} per epoch, so the two do not compare"
        )
    else:
        lines.append(
            f"the estimate before training: {rows[0].seconds:.1f} s per epoch ({rows[0].device});"
            f" the median epoch here took {median / rows[0].seconds:.2f}x that"
            if len(rows) == 1
            else "the estimates before training, one per machine of this kind, and the median epoch"
            " here against each: "
            + "; ".join(
                f"{m.seconds:.1f} s per epoch ({m.device}), {median / m.seconds:.2f}x" for m in rows
            )
        )
    return "\n".join(lines)
