"""Grad-CAM (Selvaraju et al., 2017): which parts of an image pushed a network towards a class.

The maps come from the grad-cam library (pytorch-grad-cam). This module adds what a course project
needs around it: a default target layer found for ANY nn.Module (the last conv layer, in execution
order, whose output is larger than 1x1, or the residual block that adds a shortcut after it), inputs
as uint8 or normalised images, the run's precision, and a model that comes back exactly as it was.
The library on its own puts the model in eval mode for good, overwrites its `.grad`s, and fails
under bf16 autocast (it converts activations to numpy, which has no bfloat16).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..base import PRECISIONS, ConfigError, check_choice
from ..data.loader import normalize
from ..hardware import autocast, choose_precision
from ..models.check import PROBE_BATCH, as_batch, checked_forward
from ..models.keep import kept_modes
from .gradcamplot import plot_gradcam


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore, on exit, every module's train/eval flag, every parameter's requires_grad and .grad,
    and every buffer's value (BatchNorm statistics): whatever runs inside leaves the model as it
    found it.
    """
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with kept_modes(model):
            yield
    finally:
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


class _Joins(TorchFunctionMode):
    """Notes every addition of two equal-shaped feature maps (a residual sum) and the module whose
    forward made it, at that moment of the pass (as a count of the module calls finished so far)."""

    ADDS = {"add", "add_", "__add__", "__iadd__", "__radd__"}

    def __init__(self, stack: list[str], calls: list):
        super().__init__()
        self.stack, self.calls, self.joins = stack, calls, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        a = args[:2]
        if (
            getattr(func, "__name__", "") in self.ADDS
            and len(a) == 2
            and all(isinstance(t, torch.Tensor) for t in a)
            and a[0].ndim == 4
            and a[0].shape == a[1].shape
        ):
            self.joins.append((len(self.calls), self.stack[-1] if self.stack else ""))
        return out


def _trace(
    model: nn.Module, x: torch.Tensor
) -> tuple[list[tuple[str, nn.Module, tuple]], tuple, list]:
    """(name, module, output shape) of every submodule in the order their forward passes end, the
    model's output shape, and the residual sums (`_Joins`), from one eval-mode, no-grad forward pass
    of `x`.
    """
    calls: list[tuple[str, nn.Module, tuple]] = []
    stack: list[str] = []
    handles = []

    def enter(name: str):
        return lambda mod, inp: stack.append(name)

    def leave(name: str):
        def hook(mod, inp, out) -> None:  # returns None: the output stays the module's own
            stack.pop()
            calls.append((name, mod, tuple(out.shape) if isinstance(out, torch.Tensor) else ()))

        return hook

    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_pre_hook(enter(name)))
            handles.append(m.register_forward_hook(leave(name), always_call=True))
    joins = _Joins(stack, calls)
    try:
        with preserved(model), torch.no_grad(), joins:
            model.eval()
            # (N, 10) class scores, or one line naming what it returned
            out = checked_forward(model, x)
    finally:
        for h in handles:
            h.remove()
    return calls, tuple(out.shape), joins.joins


def _default_layer(calls: list, joins: list, convs: list[str]) -> str:
    """The last conv with a map larger than 1x1, or, when a residual sum made inside a block that
    holds it follows it, that block: its output is the sum every path to the head goes through."""
    last = convs[-1]
    at = max(i for i, (name, _, _) in enumerate(calls) if name == last)
    blocks = [name for i, name in joins if i > at and name and last.startswith(name + ".")]
    if not blocks:
        return last
    shapes = {name: shape for name, _, shape in calls}
    # the outermost module whose own forward adds a shortcut after the conv
    outer = min(blocks, key=len)
    shape = shapes.get(outer, ())
    return outer if len(shape) == 4 and shape[2] * shape[3] > 1 else last


def _conv_names(calls: list[tuple[str, nn.Module, tuple]]) -> list[str]:
    """Names of the Conv2d layers with a (N, C, H, W) output larger than 1x1, last call of each, in
    order."""
    last = {
        name: i
        for i, (name, m, shape) in enumerate(calls)
        if isinstance(m, nn.Conv2d) and len(shape) == 4 and shape[2] * shape[3] > 1
    }
    return sorted(last, key=last.get)


def _resolve(model: nn.Module, x: torch.Tensor, target_layer: str | None) -> tuple[str, int]:
    """(checked target layer name, number of model outputs) from one traced forward pass of two
    images (one image is repeated: every probe of a network runs a batch of PROBE_BATCH, see
    `models.check`)."""
    calls, out_shape, joins = _trace(model, as_batch(x[:PROBE_BATCH]))
    convs = _conv_names(calls)
    if target_layer is None:
        if not convs:
            raise ConfigError(
                f"{type(model).__name__} has no Conv2d layer with an output larger than 1x1; pass "
                "target_layer= the name of a module whose output is (N, C, H, W)"
            )
        return _default_layer(calls, joins, convs), out_shape[-1]
    shown = ", ".join(convs[-6:]) or "none"
    if target_layer not in dict(model.named_modules()) or not target_layer:
        raise ConfigError(
            f"unknown target_layer {target_layer!r}; conv layers of {type(model).__name__} "
            f"(execution order, last 6): {shown}"
        )
    shapes = [shape for name, _, shape in calls if name == target_layer]
    if not shapes:
        raise ConfigError(
            f"target_layer {target_layer!r} is not called by {type(model).__name__}.forward; "
            f"conv layers that are: {shown}"
        )
    if len(shapes[-1]) != 4:
        raise ConfigError(
            f"target_layer {target_layer!r} outputs shape {shapes[-1]}; Grad-CAM needs a feature "
            f"map (N, C, H, W), e.g. one of: {shown}"
        )
    if shapes[-1][2] * shapes[-1][3] <= 1:
        raise ConfigError(
            f"target_layer {target_layer!r} outputs a 1x1 map {shapes[-1][1:]}: Grad-CAM would show"
            f" one flat colour; pick a layer with a larger output, e.g. one of: {shown}"
        )
    return target_layer, out_shape[-1]


def find_target_layer(
    model: nn.Module, images: torch.Tensor, target_layer: str | None = None
) -> str:
    """The qualified name of the layer Grad-CAM reads: `target_layer` after checking it, or by
    default the last Conv2d (in execution order) whose output is larger than 1x1, or the residual
    block around it when that block adds a shortcut after it (its output is what every path to the
    head passes), found by tracing two of `images`."""
    with torch.inference_mode(False):
        return _resolve(model, _as_input(images[:PROBE_BATCH], _device(model)), target_layer)[0]


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ConfigError(f"{type(model).__name__} has no parameters: nothing to explain") from None


def _as_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images are normalised as in training; float images are taken as already normalised."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ConfigError(
            f"images must be a tensor (N, C, H, W), got {getattr(images, 'shape', type(images))}"
        )
    if images.dtype == torch.uint8:
        return normalize(images.to(device))
    if not images.is_floating_point():
        raise ConfigError(f"images must be uint8 or normalised float, got {images.dtype}")
    return images.to(device, torch.float32)


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int] | torch.Tensor | int,
    target_layer: str | None = None,
    *,
    precision: str = "fp32",
    batch_size: int = 256,
) -> torch.Tensor:
    """Grad-CAM maps (N, H, W), float32 in [0, 1] on the CPU, of `images` for the classes `targets`.

    images: uint8 (N, 3, H, W) as stored, or already-normalised floats. targets: one class index per
    image (or one for all). target_layer: a qualified module name ("c4.1.1"); default: see
    `find_target_layer`. A layer with a 1x1 output is refused (its map would be one flat colour).
    precision: one of PRECISIONS, resolved for the model's device. Runs on the model's device; the
    model's weights, buffers, modes, flags and grads are left untouched. Each map is scaled to a
    maximum of 1 (the library's min-max scaling): compare where, not how much.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    check_choice("precision", precision, PRECISIONS)
    device = _device(model)
    amp_dtype = choose_precision(precision, device)[0]
    # inference_mode(False): the caller may sit inside predict()'s no-grad world; Grad-CAM needs
    # autograd.
    with torch.inference_mode(False), torch.enable_grad():
        x = _as_input(images, device).clone()
        n = len(x)
        targets = [int(targets)] * n if isinstance(targets, int) else [int(t) for t in targets]
        if len(targets) != n:
            raise ConfigError(f"{len(targets)} targets for {n} images: give one class per image")
        if n == 0:
            return torch.zeros(0, *x.shape[2:])
        layer, num_classes = _resolve(model, x, target_layer)
        bad = [t for t in targets if not 0 <= t < num_classes]
        if bad:
            raise ConfigError(
                f"target class {bad[0]} out of range: the model has {num_classes} outputs"
            )
        # An input that requires grad keeps the graph alive through a model whose weights are all
        # frozen.
        x.requires_grad_(True)
        maps = []
        with preserved(model):
            # The float cast (the library's activation/gradient hook) lets it read bf16 autocast
            # tensors.
            cam = GradCAM(
                model, [dict(model.named_modules())[layer]], reshape_transform=lambda t: t.float()
            )
            try:
                step = max(batch_size, PROBE_BATCH)
                for i in range(0, n, step):
                    xb, tb = x[i : i + step], targets[i : i + step]
                    # a lone image runs as a batch of two, as every
                    tb = tb * PROBE_BATCH if len(tb) == 1 else tb
                    # probe does (`as_batch`); its first map is kept
                    with autocast(device, amp_dtype):
                        out = cam(as_batch(xb), [ClassifierOutputTarget(t) for t in tb])
                    maps.append(out[: len(xb)])
            finally:
                cam.activations_and_grads.release()
    return torch.from_numpy(np.concatenate(maps)).clamp_(0, 1)


def describe_layer(model: nn.Module, layer: str, images: torch.Tensor) -> str:
    """'c4.1.1, a 1x1 Conv2d 64 -> 128, output 4x4': where Grad-CAM reads, in words a reader can
    place."""
    module = dict(model.named_modules())[layer]
    size = []
    hook = module.register_forward_hook(lambda m, i, o: size.append(tuple(o.shape[-2:])))
    try:
        with torch.no_grad(), preserved(model):
            model.eval()
            model(_as_input(images[:1], _device(model)))
    finally:
        hook.remove()
    kind = type(module).__name__
    if isinstance(module, nn.Conv2d):
        k = "x".join(map(str, module.kernel_size))
        kind = (
            f"a {k} {'depthwise ' if module.groups == module.in_channels > 1 else ''}Conv2d "
            f"{module.in_channels} -> {module.out_channels}"
        )
    out = f", output {size[0][0]}x{size[0][1]}" if size else ""
    return f"{layer} ({kind}{out})"


def gradcam_misclassified(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    indices: torch.Tensor,
    classes: Sequence[str],
    *,
    target_layer: str | None = None,
    precision: str = "fp32",
    path: str | Path | None = None,
    ncols: int = 2,
    note: str = "",
):
    """`gradcam` for the predicted and the true class of the images at `indices`, then
    `plot_gradcam`."""
    picked = images[indices]
    layer = find_target_layer(model, picked, target_layer)
    cams_pred = gradcam(model, picked, probs[indices].argmax(1), layer, precision=precision)
    cams_true = gradcam(model, picked, labels[indices], layer, precision=precision)
    return plot_gradcam(
        images,
        labels,
        probs,
        indices,
        cams_pred,
        cams_true,
        classes,
        path=path,
        ncols=ncols,
        layer=describe_layer(model, layer, picked),
        note=note,
    )
