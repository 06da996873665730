"""Following one forward pass op by op: the spatial structure that the course rules and the RF table
need.

A CPU float copy of the network runs once on a random (1, 3, 32, 32) image under a
TorchFunctionMode, which sees every torch call whether an nn.Module made it (nn.Conv2d calls
F.conv2d) or the student's own forward did (F.max_pool2d, x.mean((2, 3)), x + block(x), torch.cat,
x.view ...). Every tensor derived from the image carries a `_Meta`: its receptive field and jump per
axis, following the classic recurrence
    rf_out = rf_in + dilation * (kernel - 1) * jump_in,    jump_out = jump_in * stride
(jump = input-pixel distance between neighbouring positions of a map). Ops that keep the map size
keep the metadata; ops joining maps (add, mul, cat) take the largest RF. A pooling whose output is
1x1, or a mean / max over both spatial axes, is a global pool: each output sees the whole image, and
what the course counts is the RF *entering* it. An op that changes the map size in a way not
modelled here (interpolate, pixel_shuffle, strided slicing, ...) makes the RF unknown, with that op
as the reason, never a wrong number. (The one module over ~300 lines: one class with a method per
kind of op; cut in two, each half would need the other to be read.)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..base import IMAGE_SHAPE, CifarkitError
from ..models import count_parameters
from ..models.check import PROBE_BATCH, check_output, failure_text

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
class _Meta:
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
    outputs: list[_Meta] = field(default_factory=list)
    params: int = 0  # counted after the pass, so lazy layers (nn.LazyConv2d) have their size
    depthwise: list[str] = field(default_factory=list)  # every depthwise conv seen, paired or not
    # why a conv that looked like half a pair is not one
    near_misses: list[str] = field(default_factory=list)


_POOLS = {"max_pool2d": ("max", nn.MaxPool2d), "avg_pool2d": ("avg", nn.AvgPool2d)}
_ADAPTIVE = {
    "adaptive_avg_pool2d": ("avg", nn.AdaptiveAvgPool2d),
    "adaptive_max_pool2d": ("max", nn.AdaptiveMaxPool2d),
}
_REDUCE = {
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
_RESHAPE = {
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "view_as",
    "reshape_as",
}
_PERMUTE = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"}
# ops that move values between positions of a map even when they keep its size
_OPAQUE = {
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
_ALONG_DIM = {
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
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19)
_SCALE = {
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


def _pair(v: Any) -> Any:
    if isinstance(v, str):
        return v  # padding="same" / "valid"
    if isinstance(v, (tuple, list, torch.Size)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def collapse(v: Any) -> Cell:
    """(3, 3) -> 3; a non-square pair stays a pair."""
    return v[0] if isinstance(v, tuple) and len(v) == 2 and v[0] == v[1] else v


def _number(v: Any) -> bool:
    """A plain number, or a tensor holding one (x.sum((2, 3)) / torch.tensor(16.))."""
    if isinstance(v, torch.Tensor):
        return v.numel() == 1 and not v.requires_grad
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell_text(v: Pair) -> str:
    return f"{v[0]}x{v[1]}"


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return kwargs[name] if name in kwargs else args[i] if len(args) > i else default


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _display(func: Any) -> str:
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


class _Tracer(TorchFunctionMode):
    """Sees every torch call of one forward pass and keeps a _Meta for each tensor derived from the
    input."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.trace = net, Trace()
        self.names = {id(m): n for n, m in net.named_modules()}
        # modules whose forward is running: names the functional calls
        self.stack: list[nn.Module] = []
        # keeps the tensors alive: ids stay unique
        self.metas: dict[int, tuple[torch.Tensor, _Meta]] = {}

    def get(self, t: Any) -> _Meta | None:
        e = self.metas.get(id(t))
        return e[1] if e is not None and e[0] is t else None

    def put(self, t: torch.Tensor, m: _Meta) -> None:
        self.metas[id(t)] = (t, m)

    def hooks(self) -> list:
        def push(mod, inp):
            self.stack.append(mod)

        def pop(mod, inp, out):
            self.stack.pop()

        return [
            h
            for m in self.net.modules()
            for h in (
                m.register_forward_pre_hook(push),
                m.register_forward_hook(pop, always_call=True),
            )
        ]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._follow(func, args, kwargs, out)
        # a call misread here must neither stop the analysis nor give a number
        except Exception as e:
            if any(self.get(t) for t in _tensors((args, kwargs))):
                why = (
                    f"the RF cannot be followed past {_display(func)}, which was not understood"
                    f" ({type(e).__name__})"
                )
                for t in _tensors(out):
                    self.put(t, _Meta("map", why=why, dims=(2, 3) if t.ndim == 4 else None))
        return out

    def _where(self, func: Any, cls: type | None) -> tuple[str, str, str, bool]:
        """(row name, row kind, label for the rules, functional?) of the call being followed."""
        mod = self.stack[-1] if self.stack else None
        mname = self.names.get(id(mod), "")
        # inside a bare nn.Sequential the path is only numbers ("5.0"): the rules name the class
        # beside it
        label = (
            f"{mname} ({type(mod).__name__})"
            if mname and all(p.isdigit() for p in mname.split("."))
            else mname
        )
        if cls is not None and isinstance(mod, cls):
            return (
                mname or type(mod).__name__,
                type(mod).__name__,
                label or type(mod).__name__,
                False,
            )
        op, where = _display(func), mname or "forward"
        return where, op, f"{op} in {label or where}", True

    def _row(
        self,
        where: tuple,
        out: torch.Tensor,
        ksp: tuple,
        meta: _Meta | None,
        scope: str,
        note: str = "",
    ):
        known = scope == "local" and meta is not None
        self.trace.rows.append(
            RFRow(
                where[0],
                where[1],
                *(collapse(v) for v in ksp),
                tuple(out.shape),
                collapse(meta.jump) if known else None,
                collapse(meta.rf) if known else None,
                scope,
                note,
                where[3],
            )
        )

    # ------------------------------------------------------------ dispatch
    def _follow(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        ins = [(t, m) for t in _tensors((args, kwargs)) if (m := self.get(t)) is not None]
        if not ins:
            return
        name = getattr(func, "__name__", "")
        base = name.removesuffix("_with_indices")
        outs = list(_tensors(out))
        m = self.get(args[0]) if args else None
        if name == "__setitem__":  # x[idx] = value: x now also holds value
            return self.put(args[0], self._combine(func, ins, args[0]))
        if not outs:
            return
        if m is not None and m.kind == "map":
            if name == "conv2d":
                return self._conv(func, args, kwargs, m, outs[0])
            if base in _POOLS:
                return self._pool(func, args, kwargs, m, outs, base)
            if base in _ADAPTIVE:
                return self._adaptive(func, args, m, outs, base)
            if name in _REDUCE and not (len(args) > 1 and isinstance(args[1], torch.Tensor)):
                return self._reduce(func, args, kwargs, m, outs, name)
            if name in _PERMUTE and m.dims is not None and args[0].ndim <= len(_PRIMES):
                # where does each axis go?
                probe = torch.empty(_PRIMES[: args[0].ndim], device="meta")
                moved = func(probe, *args[1:], **kwargs).shape
                # a relayout (NCHW <-> NHWC) computes nothing: a depthwise output stays one
                return self._put_all(
                    outs, replace(m, dims=tuple(moved.index(_PRIMES[p]) for p in m.dims))
                )
            if (
                name == "pad"
                and m.dims == (args[0].ndim - 2, args[0].ndim - 1)
                and outs[0].ndim == args[0].ndim
            ):
                # a border of padding changes neither the RF nor the jump of the positions it
                # surrounds; the pad a Conv2d with padding_mode reflect / replicate / circular makes
                # (even of 0) is that conv's own padding, so a depthwise output stays one on its way
                # into a pointwise conv
                amounts = _arg(args, kwargs, 1, "pad", ())
                own = isinstance(self.stack[-1] if self.stack else None, nn.Conv2d)
                return self.put(
                    outs[0],
                    replace(
                        m,
                        hw=tuple(outs[0].shape[-2:]),
                        dw=m.dw if own or not any(amounts) else None,
                    ),
                )
            if name == "__getitem__":
                return self._getitem(func, args, m, outs[0])
            if self._opaque_here(name, args, kwargs, m):
                return self._lost(func, [(args[0], m)], outs, "mixes positions of the map")
            # nn.Linear over the channels of an NHWC map is a 1x1 conv
            if name == "linear" and m.dw:
                self.trace.separable.append((m.dw, self._where(func, nn.Linear)[2]))
        if (
            m is not None
            and m.kind == "global"
            and name in _SCALE
            and len(args) > 1
            and _number(args[1])
        ):
            self._scale_pools(
                m,
                float(args[1]) if "div" in name else 1 / float(args[1]) if float(args[1]) else 0.0,
            )
        if name in _RESHAPE and m is not None:
            return self._reshape(func, args[0], m, outs[0])
        if name in _OPAQUE and any(mm.kind == "map" for _, mm in ins):
            return self._lost(func, ins, outs, "mixes positions of the map")
        for y in outs:
            self.put(y, self._combine(func, ins, y))

    def _scale_pools(self, m: _Meta, divisor: float) -> None:
        """x.sum((2, 3)) / (H * W) (or * (1 / (H * W))) is an average: the sum pools it comes from
        become one."""
        for i in m.pools:
            pool = self.trace.pools[i]
            cells = pool.window[0] * pool.window[1]
            if pool.pooling == "sum" and divisor and abs(divisor - cells) <= 1e-6 * cells:
                pool.pooling = "avg"

    def _put_all(self, outs: list, meta: _Meta) -> None:
        for y in outs:
            self.put(y, meta)

    @staticmethod
    def _opaque_here(name: str, args: tuple, kwargs: dict, m: _Meta) -> bool:
        x = args[0]
        if name == "linear":  # contracts the last axis: channels in NHWC, but the width W in NCHW
            return m.dims is None or x.ndim - 1 in m.dims
        if name in _ALONG_DIM:
            dim = _arg(args, kwargs, 1, "dim", -1 if "sort" in name else None)
            return m.dims is None or not isinstance(dim, int) or dim % x.ndim in m.dims
        return False

    # ------------------------------------------------------------ windows: conv and pools
    def _slide(
        self,
        m: _Meta,
        k: Pair,
        s: Pair,
        p: Any,
        d: Pair,
        x: torch.Tensor,
        y: torch.Tensor,
        where: tuple,
    ) -> _Meta:
        """Meta of a sliding-window op's output, and its row."""
        dims, hw = (y.ndim - 2, y.ndim - 1), tuple(y.shape[-2:])
        if m.rf is None or m.dims != (x.ndim - 2, x.ndim - 1):
            why = (
                m.why
                or f"the RF cannot be followed past {where[2]}, which runs on a map whose axes "
                "were rearranged"
            )
            self._row(where, y, (k, s, p, d), None, "unknown", why)
            # its last two axes are spatial from here on
            return _Meta("map", why=why, dims=dims, hw=hw)
        grow = [dd * (kk - 1) for dd, kk in zip(d, k)]
        # joined maps with different steps: only a window of one position keeps the RF
        if m.jump is None:
            rf, jump = (m.rf if not any(grow) else None), None
        else:
            rf = tuple(r + g * j for r, g, j in zip(m.rf, grow, m.jump))
            jump = tuple(j * ss for j, ss in zip(m.jump, s))
        meta = _Meta("map", rf, jump, m.why, dims, hw)
        self._row(
            where,
            y,
            (k, s, p, d),
            meta,
            "local" if rf is not None else "unknown",
            m.why if rf is None else "",
        )
        return meta

    def _conv(self, func: Any, args: tuple, kwargs: dict, m: _Meta, y: torch.Tensor) -> None:
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        k, s = tuple(w.shape[-2:]), _pair(_arg(args, kwargs, 3, "stride", 1))
        p, d = (
            _pair(_arg(args, kwargs, 4, "padding", 0)),
            _pair(_arg(args, kwargs, 5, "dilation", 1)),
        )
        groups, cin, cout = _arg(args, kwargs, 6, "groups", 1), x.shape[-3], w.shape[0]
        where = self._where(func, nn.Conv2d)
        mod = self.stack[-1] if self.stack else None
        if (
            isinstance(mod, nn.Conv2d)
            and mod.padding_mode != "zeros"
            and not isinstance(mod.padding, str)
        ):
            # it padded with F.pad just before (reflect, ...): the table shows that
            p = _pair(mod.padding)
        if any(dd > 1 and kk > 1 for dd, kk in zip(d, k)):
            self.trace.dilated.append((where[2], d))
        if m.dw and k == (1, 1) and groups < cin:
            self.trace.separable.append((m.dw, where[2]))
        elif m.dw:
            kind = (
                f"a {_cell_text(k)} conv"
                if groups == 1
                else f"a {_cell_text(k)} conv with groups={groups}"
            )
            self.trace.near_misses.append(f"{m.dw} is followed by {where[2]}, {kind}, not a 1x1")
        if 1 < groups < cin:
            self.trace.near_misses.append(
                f"{where[2]} has groups={groups} of {cin} channels: grouped, not depthwise "
                f"(depthwise needs groups = channels = {cin})"
            )
        meta = self._slide(m, k, s, p, d, x, y, where)
        if groups == cin > 1 and cout % cin == 0 and max(k) > 1 and meta.kind == "map":
            meta = replace(meta, dw=where[2])  # depthwise (a depth multiplier out = k * in allowed)
            self.trace.depthwise.append(where[2])
        self.put(y, meta)

    def _pool(self, func: Any, args: tuple, kwargs: dict, m: _Meta, outs: list, base: str) -> None:
        pooling, cls = _POOLS[base]
        x, y = args[0], outs[0]
        k = _pair(_arg(args, kwargs, 1, "kernel_size"))
        stride = _arg(args, kwargs, 2, "stride", None)
        s = _pair(stride) if stride not in (None, [], ()) else k  # stride defaults to the kernel
        p = _pair(_arg(args, kwargs, 3, "padding", 0))
        d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if pooling == "max" else (1, 1)
        # a window covering the map
        if tuple(y.shape[-2:]) == (1, 1) and m.dims == (x.ndim - 2, x.ndim - 1):
            hw = tuple(x.shape[-2:])
            window = tuple(min(h, dd * (kk - 1) + 1) for h, dd, kk in zip(hw, d, k))
            return self._global(func, cls, m, outs, pooling, (k, s, p, d), window)
        self._put_all(outs, self._slide(m, k, s, p, d, x, y, self._where(func, cls)))

    def _adaptive(self, func: Any, args: tuple, m: _Meta, outs: list, base: str) -> None:
        pooling, cls = _ADAPTIVE[base]
        x, y = args[0], outs[0]
        hw, size = tuple(x.shape[-2:]), tuple(y.shape[-2:])
        if size == (1, 1) and m.dims == (x.ndim - 2, x.ndim - 1):
            return self._global(func, cls, m, outs, pooling, (hw, hw, 0, 1), hw)
        # even windows: a plain pool with kernel = stride
        if all(i % o == 0 for i, o in zip(hw, size)):
            k = tuple(i // o for i, o in zip(hw, size))
            return self._put_all(
                outs, self._slide(m, k, k, (0, 0), (1, 1), x, y, self._where(func, cls))
            )
        self._lost(
            func,
            [(x, m)],
            outs,
            f"pools uneven windows, {hw[0]}x{hw[1]} -> {size[0]}x{size[1]}",
            cls,
        )

    def _global(
        self,
        func: Any,
        cls: type | None,
        m: _Meta,
        outs: list,
        pooling: str,
        ksp: tuple,
        window: Pair,
    ) -> None:
        where = self._where(func, cls)
        hw = m.hw or tuple(outs[0].shape[-2:])
        self.trace.pools.append(GlobalPool(where[2], pooling, hw, window, m.rf, m.why))
        self._row(where, outs[0], ksp, None, "global")
        self._put_all(outs, _Meta("global", pools=frozenset({len(self.trace.pools) - 1})))

    def _reduce(
        self, func: Any, args: tuple, kwargs: dict, m: _Meta, outs: list, name: str
    ) -> None:
        x = args[0]
        dim = kwargs.get("dim", kwargs.get("axis", args[1] if len(args) > 1 else None))
        keep = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
        axes = (
            set(range(x.ndim))
            if dim is None
            else {
                int(a) % x.ndim
                for a in (dim if isinstance(dim, (tuple, list, torch.Size)) else [dim])
            }
        )
        if m.dims is None:
            return self._put_all(outs, m)
        # mean then max: "other"
        pooling = _REDUCE[name] if m.half in ("", _REDUCE[name]) else "other"
        # x.mean((2, 3)), torch.amax(x, dim=[2, 3]), x.view(n, c, -1).mean(2)
        if set(m.dims) <= axes:
            hw = m.hw or (1, 1)
            return self._global(func, None, m, outs, pooling, (hw, hw, 0, 1), hw)
        shift = (lambda p: p) if keep else (lambda p: p - sum(a < p for a in axes))
        if set(m.dims) & axes:  # one spatial axis of two: the first half of x.mean(3).mean(2)
            rest = [p for p in m.dims if p not in axes]
            return self._put_all(outs, replace(m, dims=(shift(rest[0]),), half=pooling, dw=None))
        self._put_all(outs, replace(m, dims=tuple(shift(p) for p in m.dims), dw=None))

    # ------------------------------------------------------------ shape ops
    def _reshape(self, func: Any, x: torch.Tensor, m: _Meta, y: torch.Tensor) -> None:
        shape_in, shape = tuple(x.shape), tuple(y.shape)
        if m.kind != "map" or m.dims is None or shape == shape_in:
            # more axes than it came with (a squeeze of a pooled (N, C, 1, 1) adds none)
            rebuilt = (
                m.kind != "map"
                and len(shape) >= 3
                and len(shape) > len(shape_in)
                and shape[-1] * shape[-2] > 1
            )
            if rebuilt:  # e.g. linear -> view(n, c, 4, 4): a map made from flattened features
                why = (
                    f"the RF cannot be followed past {self._where(func, None)[2]}, which rebuilds a"
                    " map from flattened features"
                )
                return self.put(
                    y, _Meta("map", why=why, dims=(y.ndim - 2, y.ndim - 1), hw=shape[-2:])
                )
            return self.put(y, m)
        n = len(m.dims)
        h, w = m.hw
        prefix = math.prod(shape_in[:-n])
        # each position already saw one whole axis: neither a plain map nor a global pool
        if m.half:
            self._lost(
                func,
                [(x, m)],
                [y],
                "reshapes a map pooled over one spatial axis only",
                dims_kept=False,
            )
        elif m.dims != tuple(range(len(shape_in) - n, len(shape_in))):
            self._lost(
                func, [(x, m)], [y], "reshapes a map whose axes were rearranged", dims_kept=False
            )
        elif len(shape) >= 2 and shape[-2:] == (h, w) and math.prod(shape[:-2]) == prefix:
            # only non-spatial axes changed
            self.put(y, replace(m, dims=(y.ndim - 2, y.ndim - 1), dw=None))
        elif shape and shape[-1] == h * w > 1 and math.prod(shape[:-1]) == prefix:
            # H and W merged, e.g. x.view(n, c, -1)
            self.put(y, replace(m, dims=(y.ndim - 1,), dw=None))
        else:  # the map became a vector: what a classifier without global pooling sees
            label = self._where(func, nn.Flatten)[2]
            self.trace.flattens.append((m.rf, m.why, label))
            self.put(y, _Meta("flat"))

    def _getitem(self, func: Any, args: tuple, m: _Meta, y: torch.Tensor) -> None:
        x, idx = args[0], args[1]
        if m.dims is None or (y.ndim == x.ndim and all(y.shape[p] == x.shape[p] for p in m.dims)):
            # e.g. x[:, :16]
            return self.put(y, replace(m, dw=m.dw if y.shape == x.shape else None))
        entries = idx if isinstance(idx, tuple) else (idx,)
        if any(e is None or isinstance(e, (torch.Tensor, list, bool)) for e in entries):
            return self._lost(
                func, [(x, m)], [y], "uses advanced indexing on a map", dims_kept=False
            )
        if any(e is Ellipsis for e in entries):
            i = next(i for i, e in enumerate(entries) if e is Ellipsis)
            entries = entries[:i] + (slice(None),) * (x.ndim - len(entries) + 1) + entries[i + 1 :]
        entries = entries + (slice(None),) * (x.ndim - len(entries))
        if any(
            not isinstance(entries[p], slice) or entries[p].step not in (None, 1) for p in m.dims
        ):
            return self._lost(
                func,
                [(x, m)],
                [y],
                "takes strided slices or single positions of the map",
                dims_kept=all(isinstance(entries[p], slice) for p in m.dims),
            )
        # a crop with step 1: the remaining positions keep their RF and jump
        dims = tuple(p - sum(isinstance(e, int) for e in entries[:p]) for p in m.dims)
        self.put(
            y,
            replace(
                m,
                dims=dims,
                hw=tuple(y.shape[p] for p in dims) if len(dims) == 2 else m.hw,
                dw=None,
            ),
        )

    # ------------------------------------------------------------ everything else
    def _combine(self, func: Any, ins: list, y: torch.Tensor) -> _Meta:
        """Elementwise and joining ops (relu, batch_norm, add, mul, cat, ...): the largest RF of the
        maps."""
        maps = [(t, m) for t, m in ins if m.kind == "map"]
        glob = [m for _, m in ins if m.kind == "global"]
        if not maps:
            pools = frozenset().union(*(m.pools for m in glob))
            return _Meta("global", pools=pools) if glob else _Meta("flat")
        aligned, spread = [], []
        for t, m in maps:
            if (
                m.dims is not None
                and t.ndim == y.ndim
                and all(t.shape[p] == y.shape[p] for p in m.dims)
            ):
                aligned.append((t, m))
            elif m.dims is not None and t.ndim == y.ndim and all(t.shape[p] == 1 for p in m.dims):
                # a 1x1 map broadcast over the other: its RF still reaches every output
                spread.append(m)
            else:
                return self._lost(func, maps, [y], self._resized(t, y))
        if not aligned:
            return self._lost(func, maps, [y], self._resized(maps[0][0], y))
        # a global pool's output scaling a map: attention (squeeze-excitation), not the head
        for g in glob:
            for i in g.pools:
                self.trace.pools[i].context = True
        known = [m for _, m in aligned] + spread
        base = aligned[0][1]
        dw = next((m.dw for t, m in aligned if m.dw and t.shape == y.shape), None)
        if any(m.rf is None for m in known):
            return _Meta(
                "map", why=next(m.why for m in known if m.rf is None), dims=base.dims, hw=base.hw
            )
        rf = tuple(max(m.rf[a] for m in known) for a in (0, 1))
        jumps = {m.jump for _, m in aligned}
        jump, why = jumps.pop(), base.why
        # e.g. a crop added to a pooled map: positions do not line up, later windows are unknown
        if jumps:
            jump, why = (
                None,
                (
                    f"the RF cannot be followed past {self._where(func, None)[2]}, which joins maps"
                    " with different jumps"
                ),
            )
        return _Meta("map", rf, jump, why, base.dims, base.hw, dw, half=base.half)

    @staticmethod
    def _resized(x: torch.Tensor, y: torch.Tensor) -> str:
        if x.ndim >= 3 and y.ndim >= 3:
            return (
                f"changes the map size, {x.shape[-2]}x{x.shape[-1]} -> {y.shape[-2]}x{y.shape[-1]}"
            )
        return f"changes the map's shape, {list(x.shape)} -> {list(y.shape)}"

    def _lost(
        self,
        func: Any,
        maps: list,
        outs: list,
        does: str,
        cls: type | None = None,
        dims_kept: bool = True,
    ) -> _Meta:
        """Outputs whose RF this analysis cannot follow; a row marks the op where it was lost."""
        where = self._where(func, cls)
        lost = [m.why for _, m in maps if m.kind == "map" and m.rf is None]
        why = lost[0] if lost else f"the RF cannot be followed past {where[2]}, which {does}"
        if not lost:
            self._row(where, outs[0], (None,) * 4, None, "unknown", why)
        x, m = maps[0]
        meta = None
        for y in outs:
            # e.g. attention over (N, HW, C)
            if dims_kept and m.dims is not None and y.shape == x.shape:
                meta = _Meta("map", why=why, dims=m.dims, hw=m.hw)
            else:  # the last two axes of a 4-d result are still spatial
                std = dims_kept and y.ndim == 4
                meta = _Meta(
                    "map",
                    why=why,
                    dims=(2, 3) if std else None,
                    hw=tuple(y.shape[-2:]) if std else None,
                )
            self.put(y, meta)
        return meta


def trace(
    model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE, *, scores: bool = False
) -> Trace:
    """Follow one forward pass of a copy of `model` on a batch of two random (*input_size) images,
    as every probe of a network runs it (`models.check`); the model is untouched. With `scores` (the
    `summary` of a network), the output must be (2, 10) class scores (NetworkError, one line,
    otherwise); without (the RF table and the rules, which read structure), any output: a part of a
    network has an RF too."""
    try:
        net, flags = copy.deepcopy(model).cpu().float().eval(), None
        device, dtype = torch.device("cpu"), torch.float32
    # not copyable (e.g. holds a lock): run the model itself in eval mode, then restore it
    except Exception:
        net, flags = model, {m: m.training for m in model.modules()}
        first = next((p for p in model.parameters() if p.is_floating_point()), None)
        device = first.device if first is not None else torch.device("cpu")
        dtype = first.dtype if first is not None else torch.float32
        model.eval()
    x = torch.randn(PROBE_BATCH, *input_size, generator=torch.Generator().manual_seed(0)).to(
        device, dtype
    )
    tracer = _Tracer(net)
    tracer.put(x, _Meta("map", (1, 1), (1, 1), dims=(2, 3), hw=tuple(input_size[-2:])))
    handles = tracer.hooks()
    try:
        # the global RNG is left as it was
        with torch.random.fork_rng(devices=[]), torch.no_grad(), tracer:
            out = net(x)
    except Exception as e:
        # naming the student's own line, as fit does (models.check.failure_text)
        raise AnalysisError(
            f"the network's forward pass fails on a {tuple(x.shape)} input: {failure_text(e)}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        for m, training in (flags or {}).items():
            m.training = training
    if scores:
        # NetworkError, one line: not (N, 10) float class scores
        check_output(out, model, PROBE_BATCH)
    tracer.trace.outputs = [m for t in _tensors(out) if (m := tracer.get(t)) is not None]
    tracer.trace.params = count_parameters(net)
    return tracer.trace
