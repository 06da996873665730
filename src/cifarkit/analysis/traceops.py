"""The tracer's handlers, one method per kind of op (`tracer._Tracer` dispatches to them): sliding
windows (convolutions and pools, where the receptive field grows by the recurrence in tracer.py's
docstring), global pools and reductions, reshapes and indexing, ops joining maps, and ops whose
effect on positions is not modelled (the RF becomes unknown, with that op as the reason).

`TraceOps` is a mixin: it reads and writes the tracer's state through `get`, `put`, `_row`,
`_where` and `trace`, which `_Tracer` defines.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .tracefacts import ADAPTIVE, POOLS, REDUCE, GlobalPool, Meta, Pair, arg, cell_text, pair


class TraceOps:
    """Handlers of `_Tracer`, by kind of op; see the module docstring."""

    # ------------------------------------------------------------ windows: conv and pools
    def _slide(
        self,
        m: Meta,
        k: Pair,
        s: Pair,
        p: Any,
        d: Pair,
        x: torch.Tensor,
        y: torch.Tensor,
        where: tuple,
    ) -> Meta:
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
            return Meta("map", why=why, dims=dims, hw=hw)
        grow = [dd * (kk - 1) for dd, kk in zip(d, k)]
        # joined maps with different steps: only a window of one position keeps the RF
        if m.jump is None:
            rf, jump = (m.rf if not any(grow) else None), None
        else:
            rf = tuple(r + g * j for r, g, j in zip(m.rf, grow, m.jump))
            jump = tuple(j * ss for j, ss in zip(m.jump, s))
        meta = Meta("map", rf, jump, m.why, dims, hw)
        self._row(
            where,
            y,
            (k, s, p, d),
            meta,
            "local" if rf is not None else "unknown",
            m.why if rf is None else "",
        )
        return meta

    def _conv(self, func: Any, args: tuple, kwargs: dict, m: Meta, y: torch.Tensor) -> None:
        x, w = args[0], arg(args, kwargs, 1, "weight")
        k, s = tuple(w.shape[-2:]), pair(arg(args, kwargs, 3, "stride", 1))
        p, d = (
            pair(arg(args, kwargs, 4, "padding", 0)),
            pair(arg(args, kwargs, 5, "dilation", 1)),
        )
        groups, cin, cout = arg(args, kwargs, 6, "groups", 1), x.shape[-3], w.shape[0]
        where = self._where(func, nn.Conv2d)
        mod = self.stack[-1] if self.stack else None
        if (
            isinstance(mod, nn.Conv2d)
            and mod.padding_mode != "zeros"
            and not isinstance(mod.padding, str)
        ):
            # it padded with F.pad just before (reflect, ...): the table shows that
            p = pair(mod.padding)
        if any(dd > 1 and kk > 1 for dd, kk in zip(d, k)):
            self.trace.dilated.append((where[2], d))
        if m.dw and k == (1, 1) and groups < cin:
            self.trace.separable.append((m.dw, where[2]))
        elif m.dw:
            kind = (
                f"a {cell_text(k)} conv"
                if groups == 1
                else f"a {cell_text(k)} conv with groups={groups}"
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

    def _pool(self, func: Any, args: tuple, kwargs: dict, m: Meta, outs: list, base: str) -> None:
        pooling, cls = POOLS[base]
        x, y = args[0], outs[0]
        k = pair(arg(args, kwargs, 1, "kernel_size"))
        stride = arg(args, kwargs, 2, "stride", None)
        s = pair(stride) if stride not in (None, [], ()) else k  # stride defaults to the kernel
        p = pair(arg(args, kwargs, 3, "padding", 0))
        d = pair(arg(args, kwargs, 4, "dilation", 1)) if pooling == "max" else (1, 1)
        # a window covering the map
        if tuple(y.shape[-2:]) == (1, 1) and m.dims == (x.ndim - 2, x.ndim - 1):
            hw = tuple(x.shape[-2:])
            window = tuple(min(h, dd * (kk - 1) + 1) for h, dd, kk in zip(hw, d, k))
            return self._global(func, cls, m, outs, pooling, (k, s, p, d), window)
        self._put_all(outs, self._slide(m, k, s, p, d, x, y, self._where(func, cls)))

    def _adaptive(self, func: Any, args: tuple, m: Meta, outs: list, base: str) -> None:
        pooling, cls = ADAPTIVE[base]
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
        m: Meta,
        outs: list,
        pooling: str,
        ksp: tuple,
        window: Pair,
    ) -> None:
        where = self._where(func, cls)
        hw = m.hw or tuple(outs[0].shape[-2:])
        self.trace.pools.append(GlobalPool(where[2], pooling, hw, window, m.rf, m.why))
        self._row(where, outs[0], ksp, None, "global")
        self._put_all(outs, Meta("global", pools=frozenset({len(self.trace.pools) - 1})))

    def _reduce(self, func: Any, args: tuple, kwargs: dict, m: Meta, outs: list, name: str) -> None:
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
        pooling = REDUCE[name] if m.half in ("", REDUCE[name]) else "other"
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
    def _reshape(self, func: Any, x: torch.Tensor, m: Meta, y: torch.Tensor) -> None:
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
                    y, Meta("map", why=why, dims=(y.ndim - 2, y.ndim - 1), hw=shape[-2:])
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
            self.put(y, Meta("flat"))

    def _getitem(self, func: Any, args: tuple, m: Meta, y: torch.Tensor) -> None:
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
    def _combine(self, func: Any, ins: list, y: torch.Tensor) -> Meta:
        """Elementwise and joining ops (relu, batch_norm, add, mul, cat, ...): the largest RF of the
        maps."""
        maps = [(t, m) for t, m in ins if m.kind == "map"]
        glob = [m for _, m in ins if m.kind == "global"]
        if not maps:
            pools = frozenset().union(*(m.pools for m in glob))
            return Meta("global", pools=pools) if glob else Meta("flat")
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
            return Meta(
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
        return Meta("map", rf, jump, why, base.dims, base.hw, dw, half=base.half)

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
    ) -> Meta:
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
                meta = Meta("map", why=why, dims=m.dims, hw=m.hw)
            else:  # the last two axes of a 4-d result are still spatial
                std = dims_kept and y.ndim == 4
                meta = Meta(
                    "map",
                    why=why,
                    dims=(2, 3) if std else None,
                    hw=tuple(y.shape[-2:]) if std else None,
                )
            self.put(y, meta)
        return meta
