"""The course rules and the receptive-field table, read from a trace of one forward pass (`tracer`).

The structure comes from what actually runs: `tracer.trace` follows one forward pass op by op, so nn
layers, functional calls (F.max_pool2d, x.mean((2, 3)), x.view), nested Sequentials and residual
paths all count. The receptive field follows the classic recurrence (see tracer.py); a global pool's
outputs see the whole image, and the course rule counts the RF *entering* it. Where the RF cannot be
followed it is reported as unknown, with the reason, and the rule verdict is UNKNOWN rather than a
wrong PASS / FAIL.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..base import IMAGE_SHAPE, ConfigError
from .tracefacts import GlobalPool, Pair, RFRow, Trace, collapse
from .tracer import trace

MIN_RF, MAX_PARAMS, MIN_ACCURACY = 44, 1_000_000, 80.0
FULL_TEST = 10_000  # CIFAR-10's test images
_POOL_WORDS = {
    "avg": ("average", "averages"),
    "max": ("max", "takes the max of"),
    "sum": ("sum", "sums"),
    "min": ("min", "takes the min of"),
    "other": ("", "pools"),
}


def _px(rf: Pair) -> str:
    return f"{collapse(rf)}" if rf[0] == rf[1] else f"{rf[0]}x{rf[1]}"


def _final(tr: Trace) -> tuple[Pair | None, str, list[str]]:
    """(RF the rule counts or None, why unknown, footnote lines for the RF table)."""
    heads = [p for p in tr.pools if not p.context]
    notes = []
    for p in tr.pools:
        name, verb = _POOL_WORDS[p.pooling]
        what = (
            f"the whole {p.hw[0]}x{p.hw[1]} map"
            if p.window == p.hw
            else f"a {p.window[0]}x{p.window[1]} window of the {p.hw[0]}x{p.hw[1]} map"
        )
        if p.context:
            notes.append(
                f"{p.label}: global {name} pool fed back into the feature maps (attention, e.g. "
                "squeeze-excitation): not the classifier's pooling"
            )
        elif len(heads) == 1:
            entering = f"{_px(p.rf_in)} px" if p.rf_in else "unknown"
            notes.append(
                f"{p.label}: global {name} pool, each output {verb} {what}; "
                f"the rule counts the RF entering it: {entering}"
            )
        else:
            notes.append(
                f"{p.label}: global {name} pool, each output {verb} {what}; RF entering it: "
                f"{_px(p.rf_in) + ' px' if p.rf_in else 'unknown'}"
            )
    seen = [(p.rf_in, p.why) for p in heads] + [(rf, why) for rf, why, _ in tr.flattens]
    seen += [(m.rf, m.why) for m in tr.outputs if m.kind == "map"]
    if not seen:
        why = (
            "no feature map computed from the input reaches the output: is it computed outside"
            " torch (numpy)?"
        )
        return None, why, notes + [f"receptive field unknown: {why}"]
    unknown = [why for rf, why in seen if rf is None]
    if unknown:
        return None, unknown[0], notes + [f"receptive field unknown: {unknown[0]}"]
    rf = tuple(max(r[a] for r, _ in seen) for a in (0, 1))
    if not heads:
        where = tr.flattens[-1][2] if tr.flattens else "the output"
        notes.append(
            "no global pool: the rule counts the RF of the last feature map before it is flattened"
            f" ({where}): {_px(rf)} px"
        )
    elif len(seen) > 1:
        notes.append(f"the rule counts the largest RF reaching the classifier: {_px(rf)} px")
    return rf, "", notes


class RFTable(list):
    """The rows of `receptive_field`, plus the RF the course rule counts and the table's
    footnotes."""

    def __init__(self, rows: list[RFRow], final: Pair | None, why: str, notes: list[str]):
        super().__init__(rows)
        self.final, self.why, self.notes = final, why, notes

    def __str__(self) -> str:
        return format_rf_table(self)


class RuleChecks(list):
    """The verdicts of `check_rules`, one RuleCheck per rule; printed as `format_rules` lays them
    out."""

    def __str__(self) -> str:
        return format_rules(self)


def receptive_field(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> RFTable:
    """Every spatial op that ran (convs, pools, global pools, functional ones too), in execution
    order; `model` may be any part of a network (its output is not checked)."""
    tr = trace(model, input_size)
    return RFTable(tr.rows, *_final(tr))


def final_receptive_field(
    model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE
) -> int | None:
    """The RF the rule counts: entering global pooling (largest over paths), else of the last map
    before flattening; the smaller side if it is not square; None when it cannot be followed."""
    final = receptive_field(model, input_size).final
    return min(final) if final else None


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v)


def format_rf_table(rows: list[RFRow]) -> str:
    """The RF table as text, with footnotes on global pooling and on what the rule counts."""
    cols = (
        ("layer", 16, "<"),
        ("type", 19, "<"),
        ("k", 3, ">"),
        ("s", 3, ">"),
        ("p", 3, ">"),
        ("d", 3, ">"),
        ("jump", 6, ">"),
        ("RF", 5, ">"),
    )
    cells = []
    for r in rows:
        jump = {"global": "-", "unknown": "?"}.get(
            r.scope, _cell(r.jump) if r.jump is not None else "?"
        )
        rf = {"global": "all", "unknown": "?"}.get(
            r.scope, _cell(r.rf) if r.rf is not None else "?"
        )
        cells.append(
            [r.name, r.kind, *map(_cell, (r.kernel, r.stride, r.padding, r.dilation)), jump, rf]
        )
    # widen a column only when a cell needs it, so the usual tables keep their layout
    widths = [max([w] + [len(c[i]) + 1 for c in cells]) for i, (_, w, _) in enumerate(cols)]
    head = "".join(f"{h:{a}{w}}" for (h, _, a), w in zip(cols, widths)) + "  output"
    lines = [head, "-" * len(head)]
    for r, c in zip(rows, cells):
        lines.append(
            "".join(f"{v:{a}{w}}" for v, (_, _, a), w in zip(c, cols, widths))
            + f"  {list(r.out_shape[1:])}"
        )
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
    """Each name once (a module called twice shows once); a long list shortened: MobileNet has 17
    pairs."""
    items = list(dict.fromkeys(items))
    return (
        ", ".join(items) if len(items) <= 3 else f"{', '.join(items[:2])} and {len(items) - 2} more"
    )


def check_rules(
    model: nn.Module,
    input_size: tuple[int, ...] = IMAGE_SHAPE,
    accuracy: float | None = None,
    test_images: int | None = None,
) -> RuleChecks:
    """The course's rules: < 1M params, RF > 44, a depthwise-separable conv, a dilated conv, global
    average pooling, and test accuracy >= 80% (percent; None: not measured yet, the verdict is
    unknown). `test_images`: how many test images `accuracy` was measured on; fewer than CIFAR-10's
    10,000 (a --limit-test run) decide nothing, and the line says so."""
    number = isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool)
    if accuracy is not None and not (number and (1 < accuracy <= 100 or accuracy == 0)):
        hint = (
            " (a fraction? pass the percentage, e.g. 86.92)" if number and 0 < accuracy <= 1 else ""
        )
        raise ConfigError(
            f"accuracy is the test accuracy in percent, in [0, 100], got {accuracy!r}{hint}"
        )
    tr = trace(model, input_size)
    params = tr.params
    rf, why, _ = _final(tr)
    separable = _listing([f"{a} + {b}" for a, b in tr.separable])
    dilated = _listing([f"{n} (dilation {_cell(collapse(d))})" for n, d in tr.dilated])
    gap = _listing([p.label for p in tr.pools if not p.context and p.pooling == "avg"])
    return RuleChecks(
        [
            RuleCheck("parameters < 1,000,000", params < MAX_PARAMS, f"{params:,}"),
            (
                RuleCheck(f"receptive field > {MIN_RF}", None, f"UNKNOWN ({why})")
                if rf is None
                else RuleCheck(f"receptive field > {MIN_RF}", min(rf) > MIN_RF, f"{_px(rf)} px")
            ),
            RuleCheck("depthwise-separable conv", bool(separable), separable or _no_separable(tr)),
            RuleCheck(
                "dilated conv",
                bool(dilated),
                dilated or "none (no conv with a kernel > 1 has dilation > 1)",
            ),
            RuleCheck("global average pooling", bool(gap), gap or _no_gap(tr.pools)),
            (
                RuleCheck(
                    f"test accuracy >= {MIN_ACCURACY:.0f}%",
                    None,
                    "UNKNOWN (not trained / not measured yet)",
                )
                if accuracy is None
                else (
                    RuleCheck(
                        f"test accuracy >= {MIN_ACCURACY:.0f}%",
                        None,
                        f"UNKNOWN ({float(accuracy):.2f}% on {test_images:,} of the {FULL_TEST:,}"
                        " test images: evaluate on all of them to decide)",
                    )
                    if test_images is not None and test_images < FULL_TEST
                    else RuleCheck(
                        f"test accuracy >= {MIN_ACCURACY:.0f}%",
                        float(accuracy) >= MIN_ACCURACY,
                        f"{float(accuracy):.2f}%"
                        + (
                            " (taken as measured on all 10,000 test images: test_images= says"
                            " otherwise)"
                            if test_images is None
                            else ""
                        ),
                    )
                )
            ),
        ]
    )


def _no_separable(tr: Trace) -> str:
    """Why no conv pair counts as depthwise-separable: the depthwise convs and what followed
    them."""
    reasons = list(dict.fromkeys(tr.near_misses))
    followed = {r.split(" is followed by ")[0] for r in reasons if " is followed by " in r}
    reasons += [
        f"{d} (depthwise) feeds no 1x1 conv"
        for d in dict.fromkeys(tr.depthwise)
        if d not in followed
    ]
    if not reasons:
        return "none (no depthwise conv: groups = in_channels = out_channels / k, kernel > 1)"
    return (
        "none ("
        + "; ".join(reasons[:3])
        + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
        + ")"
    )


def _no_gap(pools: list[GlobalPool]) -> str:
    """Why no global pool counts as GAP, so a student sees what to change."""
    heads = [p for p in pools if not p.context]
    if heads:
        return (
            "none ("
            + ", ".join(
                f"{p.label} is a global {_POOL_WORDS[p.pooling][0] or 'other'} pool" for p in heads
            )
            + ", not an average)"
        )
    if pools:
        return (
            "none ("
            + ", ".join(p.label for p in pools)
            + " feed back into the feature maps, not the classifier)"
        )
    return "none"


def format_rules(checks: list[RuleCheck]) -> str:
    """One line per rule: [PASS] / [FAIL] / [ ?? ] (cannot be decided yet), the rule, the value
    behind it."""
    return "\n".join(f"[{c.verdict}] {c.rule:<26} {c.value}" for c in checks)
