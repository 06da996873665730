"""What every CIFAR-10 network must do, checked wherever cifarkit runs one (training, evaluation,
`predict`, Grad-CAM, the tracer): a forward pass that works on a batch, returning (N, 10) float class scores.
A network that does not is refused in one line naming it and the shape, never a traceback."""
from __future__ import annotations

import torch
from torch import nn

from ..base import CLASSES, CifarkitError

NUM_CLASSES = len(CLASSES)
PROBE_BATCH = 2  # images per probe forward: a batch of one hides .squeeze() heads that fail on real batches


class NetworkError(CifarkitError):
    """A network's forward pass fails, or returns something other than (N, 10) float class scores."""


def network_name(model: nn.Module) -> str:
    inner = getattr(model, "module", None)  # a compiled wrapper names the network it wraps
    return type(inner if isinstance(inner, nn.Module) and type(model).__name__ == "CompiledModel" else model).__name__


def check_output(out, model: nn.Module, n: int) -> None:
    """NetworkError unless `out` is a float tensor of shape (n, 10)."""
    name = network_name(model)
    if not isinstance(out, torch.Tensor):
        raise NetworkError(f"{name} returned a {type(out).__name__}, not a tensor: its forward must return the "
                           f"class scores, a (N, {NUM_CLASSES}) tensor (return only the logits)")
    if not out.is_floating_point():
        raise NetworkError(f"{name} returned {out.dtype} values; class scores must be floats, a (N, {NUM_CLASSES}) "
                           "tensor of logits")
    if out.dim() != 2 or out.shape[0] != n or out.shape[1] != NUM_CLASSES:
        more = (f"; CIFAR-10 has {NUM_CLASSES} classes, so the last layer needs {NUM_CLASSES} outputs"
                if out.dim() == 2 and out.shape[0] == n else "")
        raise NetworkError(f"{name} returned shape {tuple(out.shape)} for a batch of {n} images; a CIFAR-10 "
                           f"network returns ({n}, {NUM_CLASSES}) class scores{more}")


def checked_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x), refusing in one line a forward that raises or returns anything but (N, 10) float scores."""
    try:
        out = model(x)
    except CifarkitError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the student's forward: one line, the shape in it
        first = (str(e).strip().splitlines() or [""])[0][:300]
        # chained, not hidden: the command line prints this one line; in Python the student's traceback follows
        raise NetworkError(f"{network_name(model)}'s forward fails on a batch of shape {tuple(x.shape)}: "
                           f"{type(e).__name__}: {first}") from e
    check_output(out, model, len(x))
    return out


def as_batch(t: torch.Tensor) -> torch.Tensor:
    """`t` as it is, or a lone image (label, ...) repeated to PROBE_BATCH: a network trained on batches is run
    on one. Callers keep the first row of what comes back."""
    return t.repeat(PROBE_BATCH, *([1] * (t.dim() - 1))) if len(t) == 1 else t


@torch.no_grad()
def probe(model: nn.Module, x: torch.Tensor) -> None:
    """One checked forward of `x` (normalised images on the model's device) in eval mode; the model's
    train / eval flags are put back, and eval mode leaves the BatchNorm statistics as they were."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        checked_forward(model, x[:max(PROBE_BATCH, 1)])
    finally:
        for m, training in modes:
            m.training = training
