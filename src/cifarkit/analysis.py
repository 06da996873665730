"""Looking at a network and its predictions: summary table, receptive field, course rules, errors.

The structure comes from what actually runs: `rules.trace` follows one forward pass op by op, so nn layers,
functional calls (F.max_pool2d, x.mean((2, 3)), x.view), nested Sequentials and residual paths all count.
The receptive field follows the classic recurrence (see rules.py); a global pool's outputs see the whole
image, and the course rule counts the RF *entering* it. Where the RF cannot be followed it is reported as
unknown, with the reason, and the rule verdict is UNKNOWN rather than a wrong PASS / FAIL.
"""
from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass

import torch
from torch import nn

from .config import IMAGE_SHAPE
from .rules import AnalysisError, GlobalPool, Pair, RFRow, Trace, collapse, trace

__all__ = ["AnalysisError", "RFRow", "RFTable", "RuleCheck", "check_rules", "confusion_matrix",
           "final_receptive_field", "format_rf_table", "format_rules", "misclassified", "per_class_accuracy",
           "receptive_field", "summary_text", "trace", "trace_layers"]

MIN_RF, MAX_PARAMS, MIN_ACCURACY = 44, 1_000_000, 80.0
_POOL_WORDS = {"avg": ("average", "averages"), "max": ("max", "takes the max of"), "sum": ("sum", "sums"),
               "min": ("min", "takes the min of"), "other": ("", "pools")}


def trace_layers(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> list[tuple[str, nn.Module, tuple]]:
    """(qualified name, module, output shape) for every leaf module, in the order the forward pass runs them.

    Only nn layers: functional calls are invisible here; `rules.trace` sees both.
    """
    net = copy.deepcopy(model).cpu().float().eval()  # never touch the caller's BatchNorm statistics
    names = {m: n for n, m in net.named_modules()}
    calls, hooks = [], []
    for m in net.modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out: calls.append((names[mod], mod, tuple(out.shape)))))
    try:
        with torch.no_grad():
            net(torch.zeros(1, *input_size))
    finally:
        for h in hooks:
            h.remove()
    return calls


def _px(rf: Pair) -> str:
    return f"{collapse(rf)}" if rf[0] == rf[1] else f"{rf[0]}x{rf[1]}"


def _final(tr: Trace) -> tuple[Pair | None, str, list[str]]:
    """(RF the rule counts or None, why unknown, footnote lines for the RF table)."""
    heads = [p for p in tr.pools if not p.context]
    notes = []
    for p in tr.pools:
        name, verb = _POOL_WORDS[p.pooling]
        what = f"the whole {p.hw[0]}x{p.hw[1]} map" if p.window == p.hw else \
            f"a {p.window[0]}x{p.window[1]} window of the {p.hw[0]}x{p.hw[1]} map"
        if p.context:
            notes.append(f"{p.label}: global {name} pool fed back into the feature maps (attention, e.g. "
                         "squeeze-excitation): not the classifier's pooling")
        elif len(heads) == 1:
            entering = f"{_px(p.rf_in)} px" if p.rf_in else "unknown"
            notes.append(f"{p.label}: global {name} pool, each output {verb} {what}; "
                         f"the rule counts the RF entering it: {entering}")
        else:
            notes.append(f"{p.label}: global {name} pool, each output {verb} {what}; RF entering it: "
                         f"{_px(p.rf_in) + ' px' if p.rf_in else 'unknown'}")
    seen = [(p.rf_in, p.why) for p in heads] + [(rf, why) for rf, why, _ in tr.flattens]
    seen += [(m.rf, m.why) for m in tr.outputs if m.kind == "map"]
    if not seen:
        why = "no feature map computed from the input reaches the output: is it computed outside torch (numpy)?"
        return None, why, notes + [f"receptive field unknown: {why}"]
    unknown = [why for rf, why in seen if rf is None]
    if unknown:
        return None, unknown[0], notes + [f"receptive field unknown: {unknown[0]}"]
    rf = tuple(max(r[a] for r, _ in seen) for a in (0, 1))
    if not heads:
        where = tr.flattens[-1][2] if tr.flattens else "the output"
        notes.append(f"no global pool: the rule counts the RF of the last feature map before it is flattened "
                     f"({where}): {_px(rf)} px")
    elif len(seen) > 1:
        notes.append(f"the rule counts the largest RF reaching the classifier: {_px(rf)} px")
    return rf, "", notes


class RFTable(list):
    """The rows of `receptive_field`, plus the RF the course rule counts and the table's footnotes."""

    def __init__(self, rows: list[RFRow], final: Pair | None, why: str, notes: list[str]):
        super().__init__(rows)
        self.final, self.why, self.notes = final, why, notes


def receptive_field(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> RFTable:
    """Every spatial op that ran (convs, pools, global pools, functional ones too), in execution order."""
    tr = trace(model, input_size)
    return RFTable(tr.rows, *_final(tr))


def final_receptive_field(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> int | None:
    """The RF the rule counts: entering global pooling (largest over paths), else of the last map before
    flattening; the smaller side if it is not square; None when it cannot be followed."""
    final = receptive_field(model, input_size).final
    return min(final) if final else None


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v)


def format_rf_table(rows: list[RFRow]) -> str:
    """The RF table as text, with footnotes on global pooling and on what the rule counts."""
    cols = (("layer", 16, "<"), ("type", 19, "<"), ("k", 3, ">"), ("s", 3, ">"), ("p", 3, ">"), ("d", 3, ">"),
            ("jump", 6, ">"), ("RF", 5, ">"))
    cells = []
    for r in rows:
        jump = {"global": "-", "unknown": "?"}.get(r.scope, _cell(r.jump) if r.jump is not None else "?")
        rf = {"global": "all", "unknown": "?"}.get(r.scope, _cell(r.rf) if r.rf is not None else "?")
        cells.append([r.name, r.kind, *map(_cell, (r.kernel, r.stride, r.padding, r.dilation)), jump, rf])
    # widen a column only when a cell needs it, so the usual tables keep their layout
    widths = [max([w] + [len(c[i]) + 1 for c in cells]) for i, (_, w, _) in enumerate(cols)]
    head = "".join(f"{h:{a}{w}}" for (h, _, a), w in zip(cols, widths)) + "  output"
    lines = [head, "-" * len(head)]
    for r, c in zip(rows, cells):
        lines.append("".join(f"{v:{a}{w}}" for v, (_, _, a), w in zip(c, cols, widths)) + f"  {list(r.out_shape[1:])}")
    return "\n".join(lines + list(getattr(rows, "notes", [])))


@dataclass
class RuleCheck:
    """One course rule: passed True / False, or None when it cannot be decided (see value)."""

    rule: str
    passed: bool | None
    value: str

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: " ?? "}[self.passed]


def _listing(items: list[str]) -> str:
    """Each name once (a module called twice shows once); a long list shortened: MobileNet has 17 pairs."""
    items = list(dict.fromkeys(items))
    return ", ".join(items) if len(items) <= 3 else f"{', '.join(items[:2])} and {len(items) - 2} more"


def check_rules(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE,
                accuracy: float | None = None) -> list[RuleCheck]:
    """The course's rules: < 1M params, RF > 44, a depthwise-separable conv, a dilated conv, global average
    pooling, and test accuracy >= 80% (percent; None: not measured yet, the verdict is unknown)."""
    tr = trace(model, input_size)
    params = tr.params
    rf, why, _ = _final(tr)
    separable = _listing([f"{a} + {b}" for a, b in tr.separable])
    dilated = _listing([f"{n} (dilation {_cell(collapse(d))})" for n, d in tr.dilated])
    gap = _listing([p.label for p in tr.pools if not p.context and p.pooling == "avg"])
    return [
        RuleCheck("parameters < 1,000,000", params < MAX_PARAMS, f"{params:,}"),
        RuleCheck(f"receptive field > {MIN_RF}", None, f"UNKNOWN ({why})") if rf is None else
        RuleCheck(f"receptive field > {MIN_RF}", min(rf) > MIN_RF, f"{_px(rf)} px"),
        RuleCheck("depthwise-separable conv", bool(separable), separable or "none"),
        RuleCheck("dilated conv", bool(dilated), dilated or "none"),
        RuleCheck("global average pooling", bool(gap), gap or _no_gap(tr.pools)),
        RuleCheck(f"test accuracy >= {MIN_ACCURACY:.0f}%", None, "UNKNOWN (not trained / not measured yet)")
        if accuracy is None else
        RuleCheck(f"test accuracy >= {MIN_ACCURACY:.0f}%", float(accuracy) >= MIN_ACCURACY, f"{float(accuracy):.2f}%"),
    ]


def _no_gap(pools: list[GlobalPool]) -> str:
    """Why no global pool counts as GAP, so a student sees what to change."""
    heads = [p for p in pools if not p.context]
    if heads:
        return "none (" + ", ".join(f"{p.label} is a global {_POOL_WORDS[p.pooling][0] or 'other'} pool"
                                    for p in heads) + ", not an average)"
    if pools:
        return "none (" + ", ".join(p.label for p in pools) + " feed back into the feature maps, not the classifier)"
    return "none"


def format_rules(checks: list[RuleCheck]) -> str:
    """One line per rule: [PASS] / [FAIL] / [ ?? ] (cannot be decided yet), the rule, the value behind it."""
    return "\n".join(f"[{c.verdict}] {c.rule:<26} {c.value}" for c in checks)


def summary_text(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> str:
    """torchsummary's table as a string (from a CPU copy), plus the functional spatial calls it cannot show.

    torchsummary hooks modules only, so an F.max_pool2d in forward is missing from its table (and its
    shapes seem to jump); those calls are listed under it. If torchsummary fails, one line says so.
    """
    from torchsummary import summary

    tr = trace(model, input_size)  # raises AnalysisError, one line, when the forward pass itself fails
    buf = io.StringIO()
    try:
        net = copy.deepcopy(model).cpu().float().eval()
        with contextlib.redirect_stdout(buf):
            summary(net, input_size, device="cpu")
        text = buf.getvalue()
    except Exception as e:  # e.g. a forward returning a tuple, or a network without parameters
        first = (str(e).strip().splitlines() or [""])[0]
        text = (f"(torchsummary cannot tabulate this network: {type(e).__name__}: {first}; "
                "the receptive-field table lists its spatial layers)\n")
    hidden = [r for r in tr.rows if r.functional]
    if hidden:
        text += "not shown above (functional calls, which torchsummary cannot see):\n" + "".join(
            f"  {r.kind} in {r.name} -> {list(r.out_shape[1:])}\n" for r in hidden)
    return text


# ---------------------------------------------------------------- predictions
def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """(num_classes, num_classes) counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Accuracy (%) of each true class from a confusion matrix."""
    return 100.0 * cm.diag().float() / cm.sum(1).clamp_min(1).float()


def misclassified(probs: torch.Tensor, labels: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Indices of wrongly predicted images, most confident mistakes first (at most `k`)."""
    conf, pred = probs.max(1)
    wrong = (pred != labels).nonzero().flatten()
    order = conf[wrong].argsort(descending=True)
    return wrong[order][:k]
