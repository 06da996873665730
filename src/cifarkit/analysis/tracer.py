"""Following one forward pass op by op: the spatial structure that the course rules and the RF table
need.

A CPU float copy of the network runs once on a random (1, 3, 32, 32) image under a
TorchFunctionMode, which sees every torch call whether an nn.Module made it (nn.Conv2d calls
F.conv2d) or the student's own forward did (F.max_pool2d, x.mean((2, 3)), x + block(x), torch.cat,
x.view ...). Every tensor derived from the image carries a `Meta`: its receptive field and jump per
axis, following the classic recurrence
    rf_out = rf_in + dilation * (kernel - 1) * jump_in,    jump_out = jump_in * stride
(jump = input-pixel distance between neighbouring positions of a map). Ops that keep the map size
keep the metadata; ops joining maps (add, mul, cat) take the largest RF. A pooling whose output is
1x1, or a mean / max over both spatial axes, is a global pool: each output sees the whole image, and
what the course counts is the RF *entering* it. An op that changes the map size in a way not
modelled here (interpolate, pixel_shuffle, strided slicing, ...) makes the RF unknown, with that op
as the reason, never a wrong number.

Three modules: this one (the TorchFunctionMode, its dispatch by op name, and `trace`),
`traceops` (the handler of each kind of op, a mixin of the tracer) and `tracefacts` (what a trace
records, and the op-name tables).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..base import IMAGE_SHAPE
from ..models import count_parameters
from ..models.check import PROBE_BATCH, check_output, failure_text
from .tracefacts import (
    ADAPTIVE,
    ALONG_DIM,
    OPAQUE,
    PERMUTE,
    POOLS,
    PRIMES,
    REDUCE,
    RESHAPE,
    SCALE,
    AnalysisError,
    Meta,
    RFRow,
    Trace,
    arg,
    collapse,
    display,
    number,
    tensors,
)
from .traceops import TraceOps

__all__ = ["AnalysisError", "trace"]


class _Tracer(TraceOps, TorchFunctionMode):
    """Sees every torch call of one forward pass and keeps a Meta for each tensor derived from the
    input."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.trace = net, Trace()
        self.names = {id(m): n for n, m in net.named_modules()}
        # modules whose forward is running: names the functional calls
        self.stack: list[nn.Module] = []
        # keeps the tensors alive: ids stay unique
        self.metas: dict[int, tuple[torch.Tensor, Meta]] = {}

    def get(self, t: Any) -> Meta | None:
        e = self.metas.get(id(t))
        return e[1] if e is not None and e[0] is t else None

    def put(self, t: torch.Tensor, m: Meta) -> None:
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
            if any(self.get(t) for t in tensors((args, kwargs))):
                why = (
                    f"the RF cannot be followed past {display(func)}, which was not understood"
                    f" ({type(e).__name__})"
                )
                for t in tensors(out):
                    self.put(t, Meta("map", why=why, dims=(2, 3) if t.ndim == 4 else None))
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
        op, where = display(func), mname or "forward"
        return where, op, f"{op} in {label or where}", True

    def _row(
        self,
        where: tuple,
        out: torch.Tensor,
        ksp: tuple,
        meta: Meta | None,
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
        ins = [(t, m) for t in tensors((args, kwargs)) if (m := self.get(t)) is not None]
        if not ins:
            return
        name = getattr(func, "__name__", "")
        base = name.removesuffix("_with_indices")
        outs = list(tensors(out))
        m = self.get(args[0]) if args else None
        if name == "__setitem__":  # x[idx] = value: x now also holds value
            return self.put(args[0], self._combine(func, ins, args[0]))
        if not outs:
            return
        if m is not None and m.kind == "map":
            if name == "conv2d":
                return self._conv(func, args, kwargs, m, outs[0])
            if base in POOLS:
                return self._pool(func, args, kwargs, m, outs, base)
            if base in ADAPTIVE:
                return self._adaptive(func, args, m, outs, base)
            if name in REDUCE and not (len(args) > 1 and isinstance(args[1], torch.Tensor)):
                return self._reduce(func, args, kwargs, m, outs, name)
            if name in PERMUTE and m.dims is not None and args[0].ndim <= len(PRIMES):
                # where does each axis go?
                probe = torch.empty(PRIMES[: args[0].ndim], device="meta")
                moved = func(probe, *args[1:], **kwargs).shape
                # a relayout (NCHW <-> NHWC) computes nothing: a depthwise output stays one
                return self._put_all(
                    outs, replace(m, dims=tuple(moved.index(PRIMES[p]) for p in m.dims))
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
                amounts = arg(args, kwargs, 1, "pad", ())
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
            and name in SCALE
            and len(args) > 1
            and number(args[1])
        ):
            self._scale_pools(
                m,
                float(args[1]) if "div" in name else 1 / float(args[1]) if float(args[1]) else 0.0,
            )
        if name in RESHAPE and m is not None:
            return self._reshape(func, args[0], m, outs[0])
        if name in OPAQUE and any(mm.kind == "map" for _, mm in ins):
            return self._lost(func, ins, outs, "mixes positions of the map")
        for y in outs:
            self.put(y, self._combine(func, ins, y))

    def _scale_pools(self, m: Meta, divisor: float) -> None:
        """x.sum((2, 3)) / (H * W) (or * (1 / (H * W))) is an average: the sum pools it comes from
        become one."""
        for i in m.pools:
            pool = self.trace.pools[i]
            cells = pool.window[0] * pool.window[1]
            if pool.pooling == "sum" and divisor and abs(divisor - cells) <= 1e-6 * cells:
                pool.pooling = "avg"

    def _put_all(self, outs: list, meta: Meta) -> None:
        for y in outs:
            self.put(y, meta)

    @staticmethod
    def _opaque_here(name: str, args: tuple, kwargs: dict, m: Meta) -> bool:
        x = args[0]
        if name == "linear":  # contracts the last axis: channels in NHWC, but the width W in NCHW
            return m.dims is None or x.ndim - 1 in m.dims
        if name in ALONG_DIM:
            dim = arg(args, kwargs, 1, "dim", -1 if "sort" in name else None)
            return m.dims is None or not isinstance(dim, int) or dim % x.ndim in m.dims
        return False


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
    tracer.put(x, Meta("map", (1, 1), (1, 1), dims=(2, 3), hw=tuple(input_size[-2:])))
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
    tracer.trace.outputs = [m for t in tensors(out) if (m := tracer.get(t)) is not None]
    tracer.trace.params = count_parameters(net)
    return tracer.trace
