"""What one traced forward pass records (`tracer`): the rows of the receptive-field table, the
metadata each tensor derived from the input carries, the global pools, the facts behind the course
rules, and the names of the torch calls the tracer tells apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import torch
from torch import nn

from ..base import CifarkitError

Pair = tuple[int, int]
Cell = Union[int, Pair, str, None]


class AnalysisError(CifarkitError):
    """The network cannot be analysed: its forward pass fails on a dummy image."""


@dataclass
class RFRow:
    """One spatial op of the receptive-field table (conv, pool, global pool, or an op the RF cannot
    follow)."""

    # qualified module name; for a functional call, the module whose forward made it
    name: str
    kind: str  # module class (Conv2d) or the call (F.max_pool2d, x.mean)
    kernel: Cell
    stride: Cell
    padding: Cell
    dilation: Cell
    out_shape: tuple
    # input-pixel distance between neighbouring outputs (None: unknown / not a map)
    jump: Cell
    # receptive field (pixels, one side) of one output; None: "all" or unknown, see scope
    rf: Cell
    scope: str = "local"  # "global": every output sees the whole image; "unknown": see note
    note: str = ""
    # a functional call rather than an nn layer: torchsummary's table omits it
    functional: bool = False


@dataclass(frozen=True)
class Meta:
    # "map", "global" (after a global pool) or "flat" (a flattened map)
    kind: str
    rf: Pair | None = None  # None: unknown, see why
    jump: Pair | None = None
    why: str = ""
    # positions of the (H, W) axes, (HW,) once merged; None: lost
    dims: tuple[int, ...] | None = None
    hw: Pair | None = None
    # depthwise conv this map comes from through elementwise ops only
    dw: str | None = None
    pools: frozenset = frozenset()  # global pools a "global" tensor comes from
    # pooled over one spatial axis already (x.mean(3)): how; dims = the other
    half: str = ""


@dataclass
class GlobalPool:
    """A pooling over the whole map: its outputs see the whole image; the rule counts `rf_in`."""

    label: str
    pooling: str  # "avg", "max", "sum", "min" or "other"
    hw: Pair  # the map it pools
    window: Pair  # the part of that map one output covers (a fixed kernel may drop an edge)
    rf_in: Pair | None
    why: str = ""
    # its output is fed back into feature maps (squeeze-excitation), not to the head
    context: bool = False


@dataclass
class Trace:
    """What one forward pass showed: spatial rows in execution order and the facts behind the
    rules."""

    rows: list[RFRow] = field(default_factory=list)
    separable: list[tuple[str, str]] = field(default_factory=list)  # (depthwise, pointwise) labels
    dilated: list[tuple[str, Pair]] = field(default_factory=list)
    pools: list[GlobalPool] = field(default_factory=list)
    flattens: list[tuple[Pair | None, str, str]] = field(default_factory=list)  # (rf, why, label)
    outputs: list[Meta] = field(default_factory=list)
    params: int = 0  # counted after the pass, so lazy layers (nn.LazyConv2d) have their size
    depthwise: list[str] = field(default_factory=list)  # every depthwise conv seen, paired or not
    # why a conv that looked like half a pair is not one
    near_misses: list[str] = field(default_factory=list)


POOLS = {"max_pool2d": ("max", nn.MaxPool2d), "avg_pool2d": ("avg", nn.AvgPool2d)}
ADAPTIVE = {
    "adaptive_avg_pool2d": ("avg", nn.AdaptiveAvgPool2d),
    "adaptive_max_pool2d": ("max", nn.AdaptiveMaxPool2d),
}
REDUCE = {
    "mean": "avg",
    "nanmean": "avg",
    "sum": "sum",
    "nansum": "sum",
    "amax": "max",
    "max": "max",
    "amin": "min",
    "min": "min",
    "logsumexp": "other",
}
RESHAPE = {
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "view_as",
    "reshape_as",
}
PERMUTE = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"}
# ops that move values between positions of a map even when they keep its size
OPAQUE = {
    "grid_sample",
    "matmul",
    "__matmul__",
    "__rmatmul__",
    "bmm",
    "mm",
    "einsum",
    "baddbmm",
    "conv1d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "scaled_dot_product_attention",
    "multi_head_attention_forward",
    "max_unpool2d",
    "unfold",
    "fold",
}
# ops mixing the positions along one axis `dim`: harmless over channels, not over a spatial axis
ALONG_DIM = {
    "softmax",
    "log_softmax",
    "softmin",
    "cumsum",
    "cumprod",
    "cummax",
    "cummin",
    "logcumsumexp",
    "sort",
    "argsort",
}
PRIMES = (2, 3, 5, 7, 11, 13, 17, 19)
SCALE = {
    "div",
    "div_",
    "true_divide",
    "__truediv__",
    "__itruediv__",
    "mul",
    "mul_",
    "__mul__",
    "__imul__",
    "__rmul__",
}  # a pooled sum scaled by a number: divided by H * W it is an average


def pair(v: Any) -> Any:
    if isinstance(v, str):
        return v  # padding="same" / "valid"
    if isinstance(v, (tuple, list, torch.Size)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def collapse(v: Any) -> Cell:
    """(3, 3) -> 3; a non-square pair stays a pair."""
    return v[0] if isinstance(v, tuple) and len(v) == 2 and v[0] == v[1] else v


def number(v: Any) -> bool:
    """A plain number, or a tensor holding one (x.sum((2, 3)) / torch.tensor(16.))."""
    if isinstance(v, torch.Tensor):
        return v.numel() == 1 and not v.requires_grad
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def cell_text(v: Pair) -> str:
    return f"{v[0]}x{v[1]}"


def arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return kwargs[name] if name in kwargs else args[i] if len(args) > i else default


def tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors(o)


def display(func: Any) -> str:
    """How a student would have written the call: F.max_pool2d, x.mean, torch.cat."""
    name = getattr(func, "__name__", type(func).__name__).removesuffix("_with_indices")
    if name == "__getitem__":
        return "x[...]"
    if (getattr(func, "__qualname__", "") or "").startswith(("TensorBase.", "Tensor.")):
        return f"x.{name}"
    module = getattr(func, "__module__", "") or ""
    if module.startswith(("torch.nn.functional", "torch._C._nn")) or name == "conv2d":
        return f"F.{name}"
    return f"torch.fft.{name[4:]}" if module == "torch._C._fft" else f"torch.{name}"
