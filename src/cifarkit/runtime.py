"""The one runtime decision of a run: device, precision, memory layout and determinism, made once,
in that order, and handed on as a frozen `Runtime` record that every reader takes (training, the
per-epoch and final tests, `test_predictions`, `evaluate`, `predict`, `export`, Grad-CAM, the LR
range test, the notebook). Nothing downstream re-decides from the config.

The rule (Lightning's accelerator connector is the model): the device is resolved first; then each
candidate precision, best first, is tried with each candidate layout, and a candidate is used only
if one forward + backward of a copy of the network on a few real images runs and is finite there.
The device only *ranks* what works: on a CPU the faster layout as measured (and cached) with this
network; on CUDA the tensor cores' NHWC under autocast, NCHW in fp32; elsewhere NCHW first. An
explicit setting is one candidate, and its failure is the error; a resumed or loaded run's record
gives one candidate each, so it computes as it started. A network is refused only when it fails in
every candidate.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .base import saved_precision
from .hardware import (
    DTYPES,
    PRECISION_NAME,
    autocast,
    choose_channels_last,
    choose_precision,
    hardware_string,
    measure_layouts,
    pick_layout,
)
from .models.check import NetworkError, failure_text, network_name, output_sum, probe
from .models.keep import forked_rng

LAYOUT_NAME = {True: "channels_last", False: "NCHW"}


@dataclass(frozen=True)
class Runtime:
    """How a run computes, decided once (`decide`) and saved with every checkpoint, export and
    results.json as its "choices"."""

    device: str  # the torch device string, e.g. "cpu", "cuda:0"
    precision: str  # "bf16", "fp16" (with a gradient scaler) or "fp32": the autocast dtype
    channels_last: bool  # True: NHWC memory layout for the network and its batches
    deterministic: bool  # cuDNN deterministic algorithms, benchmark off (CUDA; a CPU always is)
    hardware: str = ""  # the device in words, e.g. "GPU: NVIDIA H100"
    reasons: dict = field(default_factory=dict)  # "precision" / "layout" / ...: why, one line each

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: plain fp32)."""
        return DTYPES[self.precision]

    @property
    def layout(self) -> str:
        return LAYOUT_NAME[self.channels_last]

    def to_dict(self) -> dict:
        """Plain JSON-able values (what checkpoints store as "choices")."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Runtime":
        """A saved record; an older checkpoint's {"precision", "channels_last"} is read too
        (precision names "bfloat16" / "float16" as "bf16" / "fp16")."""
        precision = saved_precision(d["precision"])
        return cls(
            str(d.get("device", "cpu")),
            precision,
            bool(d["channels_last"]),
            bool(d.get("deterministic", False)),
            str(d.get("hardware", "")),
            dict(d.get("reasons") or {}),
        )

    def lines(self) -> list[str]:
        """What `fit` prints at the start: one line per choice with its reason."""
        why = self.reasons
        moved = f"; {why['device']}" if "device" in why else ""
        return [
            f"device: {self.device} ({self.hardware}){moved}",
            f"precision: {why.get('precision', self.precision)}",
            f"layout: {why.get('layout', self.layout)}",
            f"determinism: {why.get('deterministic', self.deterministic)}",
        ]


def decide(
    device: torch.device,
    precision: str,
    channels_last: str,
    deterministic: bool,
    model: nn.Module,
    x: torch.Tensor,
    *,
    kept: dict | None = None,
    batch: int = 64,
) -> Runtime:
    """The run's `Runtime` on `device` (resolved: `hardware.resolve_device`) for these settings
    (TrainConfig's `precision`, `channels_last`, `deterministic`) and this network: `model` on the
    device, `x` a few normalised training images (NCHW) on it. `kept`: a resumed or loaded run's
    saved record, whose precision, layout and determinism are the only candidates. Raises
    NetworkError (the network's own line) when the network fails in every candidate. `model` is not
    touched: copies are tried, the random state forked."""
    kept = {k: v for k, v in (kept or {}).items() if v is not None}
    dev = torch.device(device)
    reasons = {}
    if kept.get("device") and torch.device(kept["device"]).type != dev.type:
        reasons["device"] = (
            f"the run started on {kept['device']}: the data order and augmentation are the same"
            f" here, but {dev.type} kernels and dropout draws are not, so the numbers will differ"
            " from an unstopped run"
        )
    failures: list[str] = []
    for dtype, why in _precisions(precision, dev, kept):
        layouts = _layouts(channels_last, dev, kept, dtype)
        if layouts is None:  # CPU "auto": both layouts timed, failures named (cached per network)
            nhwc, layout_why, failed = _measured(model, dev, dtype, batch)
        else:
            nhwc, layout_why, failed = _first_that_works(model, x, dev, dtype, layouts)
        if nhwc is None:
            failures.append(f"{PRECISION_NAME[dtype]}: {failed}")
            continue
        if failures:
            why = f"{PRECISION_NAME[dtype]}: your network fails in {'; '.join(failures)}, so {why}"
        reasons.update(precision=why, layout=layout_why)
        on, reasons["deterministic"] = apply_determinism(
            dev, kept.get("deterministic", deterministic)
        )
        return Runtime(str(dev), PRECISION_NAME[dtype], nhwc, on, hardware_string(dev), reasons)
    _refuse(model, x, failures)


def _precisions(precision: str, device: torch.device, kept: dict) -> list:
    """[(dtype, reason)], best first: the kept or explicit precision alone, else what "auto" picks
    on this device, then fp32."""
    if "precision" in kept:
        return [choose_precision(precision, device, kept=saved_precision(kept["precision"]))]
    first = choose_precision(precision, device)
    if precision != "auto" or first[0] is None:
        return [first]
    return [first, (None, "fp32")]


def _layouts(setting: str, device: torch.device, kept: dict, dtype) -> list | None:
    """[(nhwc, reason)] to try in order, or None for a CPU's measured "auto"."""
    if "channels_last" in kept:
        use = bool(kept["channels_last"])
        return [(use, f"{LAYOUT_NAME[use]} (as the run chose when it started)")]
    if setting != "auto" or device.type == "cuda":
        first = choose_channels_last(setting, device, dtype)
        if setting != "auto":
            return [first]
        return [
            first,
            (
                not first[0],
                f"{LAYOUT_NAME[not first[0]]}: the network fails in {LAYOUT_NAME[first[0]]}",
            ),
        ]
    if device.type == "cpu":
        return None
    return [(False, f"NCHW on {device.type}"), (True, f"channels_last on {device.type}")]


def _measured(model: nn.Module, device: torch.device, dtype, batch: int) -> tuple:
    """(nhwc or None, reason, failure text) from the CPU's timed layouts
    (`hardware.measure_layouts`)."""
    use, why = pick_layout(*measure_layouts(model, device, dtype, batch), dtype)
    return (None, "", why) if use is None else (use, why, "")


def _first_that_works(model: nn.Module, x: torch.Tensor, device, dtype, layouts: list) -> tuple:
    """(nhwc or None, reason, failure text) for the first layout of `layouts` in which one forward +
    backward of a copy of `model` on `x` runs and is finite."""
    failed = []
    for nhwc, why in layouts:
        error = try_candidate(model, x, device, dtype, nhwc)
        if error is None:
            if failed and len(layouts) > 1:
                why = f"{LAYOUT_NAME[nhwc]}: your network fails in {'; '.join(failed)}"
            return nhwc, why, ""
        failed.append(f"{LAYOUT_NAME[nhwc]} ({error})")
    return None, "", ", ".join(failed)


def try_candidate(model: nn.Module, x: torch.Tensor, device, dtype, nhwc: bool) -> str | None:
    """None when one forward + backward of a copy of `model` (training mode) on `x` runs with a
    finite result under autocast `dtype` in layout `nhwc`; else why not, naming the network's own
    line. The random state is forked; `model` is not touched."""
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    with forked_rng():
        net = copy.deepcopy(model).to(device).train()
        try:
            net = net.to(memory_format=fmt)
            with autocast(device, dtype):
                total = output_sum(net(x.to(device).contiguous(memory_format=fmt)))
            if not torch.isfinite(total):
                raise FloatingPointError("its output is not finite")
            if total.requires_grad:  # a network with every weight frozen trains nothing: said later
                total.backward()
        except Exception as e:  # noqa: BLE001 - the network's own failure in this candidate
            return failure_text(e)
    return None


def _refuse(model: nn.Module, x: torch.Tensor, failures: list[str]):
    """The network fails in every candidate: its own error, in one line."""
    with forked_rng():
        probe(copy.deepcopy(model).to(x.device), x)  # a forward that raises says so itself
    raise NetworkError(
        f"{network_name(model)} fails in every precision and layout tried: {'; '.join(failures)}"
    )


def apply_determinism(device: torch.device, on: bool) -> tuple[bool, str]:
    """Set (process-wide, for this run) whether CUDA picks deterministic algorithms; returns (on,
    reason). On: cuDNN deterministic, its benchmark off, `torch.use_deterministic_algorithms` with a
    warning (not an error) for an op that has no deterministic version, and cuBLAS's fixed
    workspace. A CPU's kernels are deterministic for a fixed thread count either way."""
    if device.type != "cuda":
        return bool(on), (
            f"{'on' if on else 'off'}: the CPU's kernels give the same numbers for the same seed"
            " and thread count either way"
            if device.type == "cpu"
            else f"{'on' if on else 'off'} (not measured on {device.type})"
        )
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = bool(on)
    torch.backends.cudnn.benchmark = not on
    torch.use_deterministic_algorithms(bool(on), warn_only=True)
    if hasattr(torch.utils, "deterministic"):  # no NaN filling of every new tensor: a cost, no use
        torch.utils.deterministic.fill_uninitialized_memory = False
    return bool(on), (
        "on: cuDNN deterministic algorithms, benchmark off: the same seed gives the same numbers,"
        " and a resumed run those of an unstopped one"
        if on
        else "off: cuDNN picks the fastest algorithms (benchmark on): the same seed may give other"
        " numbers"
    )
