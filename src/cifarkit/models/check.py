"""What every CIFAR-10 network must do, checked wherever cifarkit runs one (training, evaluation,
`predict`, Grad-CAM, the tracer): a forward pass that works on a batch, returning (N, 10) float
class scores. A network that does not is refused in one line naming it and the shape, never a
traceback."""

from __future__ import annotations

import os
import traceback

import torch
from torch import nn

from ..base import CLASSES, CifarkitError, first_line
from .keep import kept_modes

NUM_CLASSES = len(CLASSES)
# images per probe forward: a batch of one hides .squeeze() heads that fail on real batches
PROBE_BATCH = 2


class NetworkError(CifarkitError):
    """A network's forward pass fails, or returns something other than (N, 10) float class
    scores."""


def network_name(model: nn.Module) -> str:
    inner = getattr(model, "module", None)  # a compiled wrapper names the network it wraps
    return type(
        inner if isinstance(inner, nn.Module) and type(model).__name__ == "CompiledModel" else model
    ).__name__


def describe_output(out) -> str:
    """What a forward returned, for a message: "a tuple of 2: tensor (50, 10), tensor (50, 10)"."""

    def one(v) -> str:
        return f"tensor {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__

    if isinstance(out, dict):
        return f"a dict of {len(out)}: " + ", ".join(
            f"{k!r}: {one(v)}" for k, v in list(out.items())[:4]
        )
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}: " + ", ".join(one(v) for v in out[:4])
    return f"a {type(out).__name__}"


LOSS_FN_HINT = (
    "give a loss_fn(out, y) that says how the extra outputs enter the loss (fit(cfg, loss_fn=...)"
    " or --loss-fn my_net.py:my_loss; e.g. F.cross_entropy(out[0], y) + 0.3 *"
    " F.cross_entropy(out[1], y)), or return only the logits"
)


def check_output(out, model: nn.Module, n: int) -> None:
    """NetworkError unless `out` is a float tensor of shape (n, 10)."""
    name = network_name(model)
    if not isinstance(out, torch.Tensor):
        mode = "in training mode" if model.training else "in eval mode"
        hint = LOSS_FN_HINT if model.training else "in eval mode it must return only the logits"
        raise NetworkError(
            f"{name} returned {describe_output(out)} {mode}, not the class scores, a (N, "
            f"{NUM_CLASSES}) tensor: {hint}"
        )
    if not out.is_floating_point():
        raise NetworkError(
            f"{name} returned {out.dtype} values; class scores must be floats, a (N, {NUM_CLASSES})"
            " tensor of logits"
        )
    if out.dim() != 2 or out.shape[0] != n or out.shape[1] != NUM_CLASSES:
        more = (
            f"; CIFAR-10 has {NUM_CLASSES} classes, so the last layer needs {NUM_CLASSES} outputs"
            if out.dim() == 2 and out.shape[0] == n
            else ""
        )
        raise NetworkError(
            f"{name} returned shape {tuple(out.shape)} for a batch of {n} images; a CIFAR-10 "
            f"network returns ({n}, {NUM_CLASSES}) class scores{more}"
        )


class OutOfMemory(CifarkitError):
    """A batch does not fit in the device's memory."""


def is_out_of_memory(e: BaseException) -> bool:
    """True for a GPU's OutOfMemoryError or a CPU allocator's failure to allocate."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    text = str(e)
    return (bool(oom) and isinstance(e, oom)) or (
        isinstance(e, (RuntimeError, MemoryError))
        and (
            "out of memory" in text or "can't allocate memory" in text or isinstance(e, MemoryError)
        )
    )


def checked_forward(model: nn.Module, x: torch.Tensor, any_output: bool = False):
    """model(x), refusing in one line a forward that raises or returns anything but (N, 10) float
    scores (`any_output`: anything it returns is passed on, for a `loss_fn` to read)."""
    try:
        out = model(x)
    except CifarkitError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the student's forward: one line, the shape in it
        if is_out_of_memory(e):  # the batch's fault, not the network's code
            raise OutOfMemory(
                f"out of memory running {network_name(model)} on a batch of {len(x)} images"
                f" ({first_line(e, 120)}): lower batch_size (training) or eval_batch_size"
                " (evaluation), or use a smaller network"
            ) from None
        # chained, not hidden: the command line prints this one line; in Python the student's
        # traceback follows
        raise NetworkError(
            f"{network_name(model)}'s forward fails on a batch of shape {tuple(x.shape)}: "
            f"{failure_text(e)}"
        ) from e
    if not any_output:
        check_output(out, model, len(x))
    return out


def output_parts(out) -> list:
    """What a forward returned, as a list: the values of a dict, the items of a tuple / list, else
    the one output itself."""
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


def logits_of(out, model: nn.Module, n: int) -> torch.Tensor:
    """The class scores in what a training-mode forward returned for `n` images: the tensor itself,
    or the first (n, 10) float tensor of a tuple / list / dict (a network with auxiliary heads);
    NetworkError if none.
    """
    for p in output_parts(out):
        if (
            isinstance(p, torch.Tensor)
            and p.is_floating_point()
            and p.dim() == 2
            and tuple(p.shape) == (n, NUM_CLASSES)
        ):
            return p
    raise NetworkError(
        f"{network_name(model)} returned {describe_output(out)}: none is ({n}, {NUM_CLASSES}) "
        "class scores, which the training accuracy is counted from"
    )


def as_batch(t: torch.Tensor) -> torch.Tensor:
    """`t` as it is, or a lone image (label, ...) repeated to PROBE_BATCH: a network trained on
    batches is run on one. Callers keep the first row of what comes back."""
    return t.repeat(PROBE_BATCH, *([1] * (t.dim() - 1))) if len(t) == 1 else t


@torch.no_grad()
def probe(model: nn.Module, x: torch.Tensor) -> None:
    """One checked forward of `x` (normalised images on the model's device) in eval mode; the
    model's train / eval flags are put back, and eval mode leaves the BatchNorm statistics as they
    were."""
    with kept_modes(model):
        checked_forward(model.eval(), x[: max(PROBE_BATCH, 1)])


def output_sum(out) -> torch.Tensor:
    """The sum of every floating-point tensor a forward returned (a tensor, or a tuple / list / dict
    of them: a network with an auxiliary head), as one fp32 scalar to run backward from."""
    sums = [
        p.float().sum()
        for p in output_parts(out)
        if isinstance(p, torch.Tensor) and p.is_floating_point()
    ]
    if not sums:
        raise TypeError(f"the forward returned {type(out).__name__}, no float tensor")
    return torch.stack(sums).sum()


def failure_text(e: BaseException) -> str:
    """'ErrorType: first line of the message (file.py, line N: the code)', naming the innermost line
    of the network's own code (outside torch and cifarkit) where there is one."""
    return f"{type(e).__name__}: {first_line(e, 200)}{user_frame(e)}"


def user_frame(e: BaseException) -> str:
    """' (net.py, line 12: x = x.view(...))' for the innermost traceback frame outside torch,
    cifarkit and the standard library, or '' when there is none."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not _library_file(f.filename)]
    if not frames:
        return ""
    f = frames[-1]
    cell = f.filename.startswith("<") or "ipykernel_" in f.filename  # Jupyter's cell files
    where = "a notebook cell" if cell else os.path.basename(f.filename)
    return f" ({where}, line {f.lineno}{': ' + f.line.strip()[:80] if f.line else ''})"


def _library_file(name: str) -> bool:
    """True for a file of torch, of cifarkit or of Python's standard library (not the student's
    code)."""
    if name.startswith(_LIBRARY_DIRS[:2]):
        return True
    return name.startswith(_LIBRARY_DIRS[2]) and "site-packages" not in name


_LIBRARY_DIRS = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # cifarkit/
    # the standard library
    os.path.dirname(os.__file__) + os.sep,
)
