"""What the machine is and what runs fast on it: device, precision, memory layout, a description,
and (on a CPU under glibc) memory kept for reuse instead of page-faulted in for every batch.

Every "auto" choice of a run is made here, from what the hardware has or from a measurement on it,
and comes with a one-line reason that `fit` prints: bf16 autocast only where it is native (emulated
bf16 is slower than fp32), and on a CPU the memory layout (NCHW or channels_last) that a few timed
passes of the run's own network show to be faster on this machine (docs/speed.md).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .atomic import WriteError, atomic_write_text
from .base import CHANNELS_LAST_MODES, PRECISIONS, CifarkitError, cache_dir, check_choice
from .models.check import failure_text, output_sum
from .models.keep import forked_rng


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto": CUDA if present, then Apple MPS, then CPU; otherwise the named device."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise CifarkitError(
                f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CifarkitError("device 'cuda' requested but torch sees no CUDA GPU")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise CifarkitError("device 'mps' requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions natively: AMX (Sapphire Rapids+) or AVX-512-BF16
    (Zen 4+)."""
    return cpu_kind() in ("AMX-BF16", "AVX-512-BF16")


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # name -> autocast dtype
_LABEL = {torch.bfloat16: "bf16", torch.float16: "fp16 + gradient scaler", None: "fp32"}


def choose_precision(
    precision: str, device: torch.device, kept: str | None = None
) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for `precision` on `device` (None: plain fp32) and a one-line reason to
    print.

    "auto" picks what the hardware runs natively:
      CUDA compute capability >= 8.0 (A100, L4, H100): bf16 (fp32's range, so no loss scaling
      needed). CUDA 7.x (T4, V100): fp16 with a GradScaler. Not `torch.cuda.is_bf16_supported()`:
      it returns True on a T4 because it counts emulation (including_emulation=True by default,
      pytorch/pytorch#148322), while cuDNN has no bf16 convolution engines below 8.0, so bf16
      there is slow.
      CUDA < 7.0 (P100 and older: no tensor cores): fp32.
      CPU: bf16 where oneDNN has native bf16 (AMX or AVX-512-BF16), else fp32 (emulated bf16 is
      slower). MPS: fp32 (autocast support varies with the macOS / torch version).
    An explicit "bf16" / "fp16" / "fp32" is always honoured; the reason says when the device only
    emulates it. `kept`: the precision a resumed run chose when it started ("bf16", "fp16", "fp32"),
    used whatever `precision` would choose now, so the run computes as it did.
    """
    if kept is not None:
        dtype, reason = choose_precision(kept, device)
        head, _, why = reason.partition(": ")
        return (
            dtype,
            f"{head.replace(' (requested)', '')} (as the run chose when it started): {why}",
        )
    check_choice("precision", precision, PRECISIONS)
    asked = "" if precision == "auto" else " (requested)"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        card = f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}"
        auto = torch.bfloat16 if major >= 8 else torch.float16 if major >= 7 else None
        dtype = auto if precision == "auto" else DTYPES[precision]
        if dtype == torch.bfloat16:
            note = (
                "native bf16"
                if major >= 8
                else f"no native bf16: emulated and slow; auto picks {_LABEL[auto]}"
            )
        elif dtype == torch.float16:
            note = (
                "no tensor cores: fp16 is not faster there"
                if major < 7
                else "no native bf16"
                if major < 8
                else "auto picks bf16, which needs no scaler"
            )
        else:
            note = "no tensor cores for fp16 / bf16" if major < 7 else f"auto picks {_LABEL[auto]}"
        return dtype, f"{_LABEL[dtype]}{asked}: {card} ({note})"
    if device.type == "cpu":
        native = cpu_has_fast_bf16()
        dtype = (torch.bfloat16 if native else None) if precision == "auto" else DTYPES[precision]
        why = f"this CPU has {'' if native else 'no '}native bf16 (AMX or AVX-512-BF16)"
        if dtype == torch.float16:
            why = "fp16 on a CPU is mostly emulated, likely slower than fp32"
        elif dtype == torch.bfloat16 and not native:
            why += ": emulated, likely slower than fp32"
        return dtype, f"{_LABEL[dtype]}{asked}: {why}"
    dtype = None if precision == "auto" else DTYPES[precision]
    why = (
        "autocast support on Apple MPS varies with the macOS / torch version"
        if precision == "auto"
        else device.type
    )
    return dtype, f"{_LABEL[dtype]}{asked}: {why}"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for `dtype`, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def choose_channels_last(
    setting: str,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    model: nn.Module | None = None,
    batch: int = 64,
) -> tuple[bool, str]:
    """(use channels_last, one-line reason) for the config's `channels_last` ("auto", "yes", "no").

    "auto" on a CPU with `model`: measured. A copy of `model` runs a few forward + backward passes
    of a `batch`-image batch in each layout, alternating, and the faster layout wins (the result is
    cached per CPU, thread count, torch version and network in the cache folder, see
    `probe_cache_path`). Why measure: on 2-core AMD EPYC Zen 3 CPUs (AVX2, fp32) NHWC came out
    1.2-1.3x faster in one session and 0.8x in another; a rule would be wrong on one of them. "auto"
    on CUDA: NHWC with fp16 / bf16 autocast (the tensor cores' layout), NCHW in fp32; on a CPU
    without `model`: NHWC; elsewhere NCHW.
    """
    check_choice("channels_last", setting, CHANNELS_LAST_MODES)
    if setting != "auto":
        return setting == "yes", f"{'channels_last' if setting == 'yes' else 'NCHW'} (requested)"
    if device.type == "cuda":
        if amp_dtype is not None:
            return (
                True,
                f"channels_last: {PRECISION_NAME[amp_dtype]} tensor-core convolutions want NHWC",
            )
        return False, "NCHW: fp32 convolutions gain nothing from NHWC on a GPU"
    if device.type != "cpu":
        return False, f"NCHW on {device.type}"
    if model is None:
        return True, "channels_last (CPU default; not measured for this network)"
    use, why = pick_layout(*measure_layouts(model, device, amp_dtype, batch), amp_dtype)
    return (False, f"NCHW ({why})") if use is None else (use, why)


# the names config.json uses
PRECISION_NAME = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}
PROBE_STEPS = 3  # timed forward + backward passes per layout (after one untimed pass each)


def probe_cache_path() -> Path:
    """The JSON file of layout measurements: $CIFARKIT_LAYOUT_CACHE, else layout.json in the data
    cache."""
    return Path(os.environ.get("CIFARKIT_LAYOUT_CACHE") or cache_dir() / "layout.json")


def measure_layouts(
    model: nn.Module, device: torch.device, amp_dtype, batch: int
) -> tuple[float | str, float | str, str]:
    """(NCHW img/s or why it fails, NHWC img/s or why it fails, how it was known) for forward +
    backward of a copy of `model` under autocast `amp_dtype`: measured now, or read from the cache
    of earlier measurements of this network on this machine (only a valid measurement, two
    positive speeds, is kept or believed; anything else is measured again)."""
    n_params = sum(p.numel() for p in model.parameters())
    key = (
        f"{cpu_name()}|{cpu_kind()}|{torch.get_num_threads()} threads|torch"
        f" {torch.__version__}|{type(model).__module__}.{type(model).__qualname__}|{n_params}"
        f"|{PRECISION_NAME[amp_dtype]}|batch"
        f" {batch}"
    )
    path = probe_cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    if _valid_speeds(cached.get(key)):
        nchw, nhwc = cached[key]
        return float(nchw), float(nhwc), "measured earlier on this machine"
    # img/s, or why the layout failed
    nchw, nhwc = _time_layouts(model, device, amp_dtype, batch)
    if _valid_speeds([nchw, nhwc]):  # only a real measurement is kept
        _write_cache(path, {**cached, key: [nchw, nhwc]})
    return nchw, nhwc, f"measured now, {PROBE_STEPS} passes of {batch} images each"


def _valid_speeds(entry) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 2
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")
            for v in entry
        )
    )


def pick_layout(nchw, nhwc, how: str, amp_dtype) -> tuple[bool | None, str]:
    """(use channels_last, one-line reason) from `measure_layouts`' answer: the faster of the
    layouts the network runs correctly in; (None, why) when it fails in both."""
    if isinstance(nchw, str) and isinstance(nhwc, str):
        return None, f"the network fails in both layouts: {nchw}"
    if isinstance(nchw, str) or isinstance(nhwc, str):
        use = isinstance(nchw, str)
        return use, (
            f"{'channels_last' if use else 'NCHW'}: your network fails in"
            f" {'NCHW' if use else 'channels_last'} ({nchw if use else nhwc}), so"
            f" {'NHWC' if use else 'NCHW'}"
        )
    use = nhwc > nchw
    return use, (
        f"{'channels_last' if use else 'NCHW'}: {max(nchw, nhwc):.0f} vs {min(nchw, nhwc):.0f}"
        f" img/s ({'NHWC vs NCHW' if use else 'NCHW vs NHWC'}, {PRECISION_NAME[amp_dtype]};"
        f" {how})"
    )


def _write_cache(path: Path, entries: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entries))
    except (OSError, WriteError):
        pass  # a read-only cache only costs the probe next time


def _time_layouts(model: nn.Module, device: torch.device, amp_dtype, batch: int) -> tuple:
    """img/s of forward + backward of a copy of `model` in NCHW and in NHWC (best of PROBE_STEPS,
    alternating); for a layout in which the network fails or gives a non-finite result, the reason
    (a str) instead.
    """
    with forked_rng():  # the run's random streams are left alone
        return _time_copy(copy.deepcopy(model).to(device).train(), device, amp_dtype, batch)


def _time_copy(probe: nn.Module, device: torch.device, amp_dtype, batch: int) -> tuple:
    x = torch.randn(batch, 3, 32, 32, device=device)
    result: dict[bool, float | str] = {False: 0.0, True: 0.0}
    for i in range(PROBE_STEPS + 1):
        for nhwc in (False, True) if i % 2 == 0 else (True, False):
            if isinstance(result[nhwc], str):
                continue  # this layout failed already
            fmt = torch.channels_last if nhwc else torch.contiguous_format
            try:
                probe = probe.to(memory_format=fmt)
                xi = x.contiguous(memory_format=fmt)
                start = time.perf_counter()
                with autocast(device, amp_dtype):
                    total = output_sum(probe(xi))
                if not torch.isfinite(total):
                    raise FloatingPointError("its output is not finite")
                if total.requires_grad:  # every weight frozen: nothing to time backward through
                    total.backward()
            except Exception as e:  # noqa: BLE001 - the network's own error, kept as the reason for this layout
                result[nhwc] = failure_text(e)
                continue
            finally:
                probe.zero_grad(set_to_none=True)
            if i > 0:  # the first pass of each layout warms oneDNN's kernel cache
                result[nhwc] = max(result[nhwc], batch / (time.perf_counter() - start))
    return tuple(round(v, 1) if isinstance(v, float) else v for v in (result[False], result[True]))


def is_nhwc(t: torch.Tensor) -> bool:
    """True for a 4-d tensor stored channels_last (an NCHW-contiguous one with C > 1 is not)."""
    return (
        t.dim() == 4
        and t.is_contiguous(memory_format=torch.channels_last)
        and not t.is_contiguous()
    )


def model_is_nhwc(model: nn.Module) -> bool:
    """True when the model's 4-d weights are stored channels_last (inputs should then be NHWC
    too)."""
    return next((is_nhwc(p) for p in model.parameters() if p.dim() == 4), False)


def channels_last_for(cfg, device: torch.device, precision: str | None = None) -> bool:
    """Whether a run with TrainConfig `cfg` (and `precision` instead of the config's, if given) uses
    NHWC, without measuring (evaluation and loaders built without a model: see
    `choose_channels_last`)."""
    amp_dtype = choose_precision(precision or cfg.precision, device)[0]
    return choose_channels_last(cfg.channels_last, device, amp_dtype)[0]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return name


def cpu_kind() -> str:
    """The CPU's vector unit as it matters for training speed: "AMX-BF16", "AVX-512-BF16", else the
    instruction set torch dispatches to ("AVX512", "AVX2", "DEFAULT" ...)."""
    for probe, kind in (
        ("_is_amx_tile_supported", "AMX-BF16"),
        ("_is_avx512_bf16_supported", "AVX-512-BF16"),
    ):
        fn = getattr(torch.cpu, probe, None) or getattr(torch._C._cpu, probe, None)
        if fn is not None and fn():
            return kind
    getter = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return getter() if getter is not None else platform.machine()


def hardware_string(device: torch.device) -> str:
    """A short description of the device, e.g. 'CPU: AMD EPYC (AVX2, 2 threads)' or 'GPU: NVIDIA
    H100'."""
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "GPU: Apple MPS"
    return f"CPU: {cpu_name()} ({cpu_kind()}, {torch.get_num_threads()} threads)"


# glibc's mallopt parameters (malloc.h) and the free memory it may keep at the top of its heap
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEEP_FREE_BYTES = 1 << 30


def keep_freed_memory(device: torch.device) -> str | None:
    """On a CPU under glibc (Linux): serve large tensors from the heap and keep freed memory for
    reuse, so training steps stop page-faulting fresh memory in for every large activation.

    glibc gives every allocation above its mmap threshold (32 MiB at most; one batch of 256
    32-channel 32x32 fp32 activations is 33.5 MB) its own mmap and unmaps it on free, so the next
    step's tensor is faulted in again and zeroed by the kernel: ~150 MB per step for the seed
    network, and every test-pass batch of 1000 images. `mallopt(M_MMAP_MAX, 0)` and a 1 GiB trim
    threshold keep that memory in the process (peak RSS ~20% higher). Measured side by side
    (benchmarks/README.md): 1.14x training steps in fp32, 1.25x in bf16, 2x the test pass. The
    setting is process-wide and stays; numerics are unchanged. Returns the one-line note `fit`
    prints, or None where it does not apply (not a CPU, not glibc) or was refused.
    """
    return _keep_freed_glibc_memory() if device.type == "cpu" else None


@functools.cache  # the settings are the whole process's: made once, the same note after that
def _keep_freed_glibc_memory() -> str | None:
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if libc.mallopt(_M_MMAP_MAX, 0) != 1 or not libc.mallopt(
            _M_TRIM_THRESHOLD, _KEEP_FREE_BYTES
        ):
            return None
    except (OSError, AttributeError):
        return None
    return (
        "freed CPU memory is kept for reuse (glibc: large tensors from the heap, not a fresh mmap"
        " each), so steps do not page-fault it in again"
    )


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB (None where the OS does not report it)."""
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # macOS reports bytes
        return round(kb / 1024 / (1024 if sys.platform == "darwin" else 1), 1)
    except (ImportError, OSError):
        return None
