"""Looking at a network and its predictions: summary table, receptive field, course rules, errors.

The receptive field is computed from the real modules: a forward pass with hooks records every leaf
layer in execution order with its output shape, then the classic recurrence runs over that chain:
    rf_out = rf_in + (dilation * (kernel - 1)) * jump_in,   jump_out = jump_in * stride
(jump = distance in input pixels between neighbouring positions of a feature map). Networks are
treated as a chain of layers in execution order, which is exact for the plain stacks used here.
"""
from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass

import torch
from torch import nn

from .config import IMAGE_SHAPE
from .models import count_parameters

SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _pair(v) -> int:
    return v[0] if isinstance(v, (tuple, list)) else int(v)


def trace_layers(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> list[tuple[str, nn.Module, tuple]]:
    """(qualified name, module, output shape) for every leaf module, in the order the forward pass runs them."""
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


@dataclass
class RFRow:
    """One layer of the receptive-field table."""

    name: str
    kind: str
    kernel: int | None
    stride: int | None
    padding: int | None
    dilation: int | None
    out_shape: tuple
    jump: int   # input-pixel distance between neighbouring outputs of this layer
    rf: int     # receptive field (pixels, one side) of one output of this layer


def receptive_field(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> list[RFRow]:
    """Receptive-field table of every spatial layer (convs, pools, global pool), in execution order."""
    rows, rf, jump, in_hw = [], 1, 1, input_size[-1]
    for name, m, shape in trace_layers(model, input_size):
        if isinstance(m, SPATIAL):
            k, s = _pair(m.kernel_size), _pair(m.stride)
            p, d = _pair(m.padding), _pair(getattr(m, "dilation", 1))
            rf, jump = rf + d * (k - 1) * jump, jump * s
            rows.append(RFRow(name, type(m).__name__, k, s, p, d, shape, jump, rf))
        elif isinstance(m, GLOBAL_POOLS) and tuple(shape[-2:]) == (1, 1):
            rf, jump = rf + (in_hw - 1) * jump, jump * in_hw  # a window as large as its input
            rows.append(RFRow(name, type(m).__name__, in_hw, in_hw, 0, 1, shape, jump, rf))
        if len(shape) == 4:
            in_hw = shape[-1]
    return rows


def final_receptive_field(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> int:
    """Receptive field of the last layer before global pooling: what the classifier's features see."""
    rows = [r for r in receptive_field(model, input_size) if r.kind not in {c.__name__ for c in GLOBAL_POOLS}]
    return rows[-1].rf if rows else 1


def format_rf_table(rows: list[RFRow]) -> str:
    head = f"{'layer':<16}{'type':<19}{'k':>3}{'s':>3}{'p':>3}{'d':>3}{'jump':>6}{'RF':>5}  output"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.name:<16}{r.kind:<19}{r.kernel:>3}{r.stride:>3}{r.padding:>3}{r.dilation:>3}"
                     f"{r.jump:>6}{r.rf:>5}  {list(r.out_shape[1:])}")
    return "\n".join(lines)


@dataclass
class RuleCheck:
    """One course rule: whether it passes and the number or layer behind the verdict."""

    rule: str
    passed: bool
    value: str


def check_rules(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> list[RuleCheck]:
    """The course's rules: < 1M params, RF > 44, a depthwise-separable conv, a dilated conv, GAP."""
    layers = trace_layers(model, input_size)
    params = count_parameters(model)
    rf = final_receptive_field(model, input_size)
    separable = [f"{a[0]} + {b[0]}" for a, b in zip(layers, layers[1:])
                 if isinstance(a[1], nn.Conv2d) and a[1].groups > 1 and a[1].groups == a[1].in_channels
                 and isinstance(b[1], nn.Conv2d) and _pair(b[1].kernel_size) == 1]
    dilated = [f"{n} (dilation {_pair(m.dilation)})" for n, m, _ in layers
               if isinstance(m, nn.Conv2d) and _pair(m.dilation) > 1]
    gap = [n for n, m, s in layers if isinstance(m, nn.AdaptiveAvgPool2d) and tuple(s[-2:]) == (1, 1)]
    return [
        RuleCheck("parameters < 1,000,000", params < 1_000_000, f"{params:,}"),
        RuleCheck("receptive field > 44", rf > 44, f"{rf} px"),
        RuleCheck("depthwise-separable conv", bool(separable), ", ".join(separable) or "none"),
        RuleCheck("dilated conv", bool(dilated), ", ".join(dilated) or "none"),
        RuleCheck("global average pooling", bool(gap), ", ".join(gap) or "none"),
    ]


def format_rules(checks: list[RuleCheck]) -> str:
    return "\n".join(f"[{'PASS' if c.passed else 'FAIL'}] {c.rule:<26} {c.value}" for c in checks)


def summary_text(model: nn.Module, input_size: tuple[int, ...] = IMAGE_SHAPE) -> str:
    """torchsummary's table as a string, from a CPU copy so the model's own state is untouched."""
    from torchsummary import summary

    net = copy.deepcopy(model).cpu().float().eval()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary(net, input_size, device="cpu")
    return buf.getvalue()


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
