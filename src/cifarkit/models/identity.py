"""What identifies a network's code, so a run folder can tell whether the network passed now is the
one that trained it: a notebook cell edited and run again must never be handed the old run's weights
or results.

`network_identity(net)` records four parts, each as a short hash (plus a readable `name`):

  - ``code``: the source of every method of every network class in the model (the class itself and
    each submodule class that is not torch's), and of the functions of the student's own that those
    methods call by name (a `conv_bn` helper in the same file or notebook, and the ones it calls),
    parsed, so comments, blank lines, indentation and docstrings do not count; any other edit (an
    operator, a constant, a renamed variable) does;
  - ``layers``: every layer and its settings as ``repr(net)`` prints them (channels, kernel, stride,
    dilation, groups, padding mode, dropout rate...): what the constructor's arguments built; and
    the flags a network class of one's own keeps as attributes (bool, str or None values, e.g.
    ``self.aux = True``), which no layer shows;
  - ``forward``: the sequence of torch operations one forward pass of two blank images runs, with
    their output shapes (another pool, another activation, a changed view);
  - ``parameters``: the names and shapes of every parameter and buffer (what a state_dict must fit).

The record holds where it was made (``python`` and ``torch``, major.minor). The code is read as
parsed source written out the same way on every Python (`_canonical`), so it compares across
Python versions; ``layers`` and ``forward`` use torch's own names (a layer's repr gained
``bias=True`` between torch 2.11 and 2.14), so a record made under another torch release is compared
on its code and parameter shapes only (`identity_changes`; `uncompared` says which parts were not).

The forward pass runs on a CPU copy in eval mode without gradients and with the random state forked,
so it changes neither the network, nor its BatchNorm statistics, nor the random numbers the run
draws. Lazy modules (`nn.LazyConv2d`...) are materialised first (`materialize`), as training would
do anyway.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import sys
import textwrap
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedTensorMixin
from torch.overrides import TorchFunctionMode

from .check import NetworkError, checked_forward
from .keep import forked_rng, kept_modes

# of the identity's definition: a run recorded under another version is not compared (a note says
# so)
VERSION = 4
# in the order a difference is named: the most telling first
PARTS = ("parameters", "layers", "forward", "code")
WHAT_CHANGED = {
    "parameters": "parameter shapes",
    "layers": "layers",
    "forward": "forward",
    "code": "code",
}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _own_classes(net: nn.Module) -> list[type]:
    """The network classes written outside torch: the model's own and its submodules', once each."""
    seen: dict[str, type] = {}
    for m in net.modules():
        for cls in type(m).__mro__:
            module = getattr(cls, "__module__", "") or ""
            if (
                cls in (nn.Module, object)
                or module.startswith(("torch.", "torchvision."))
                or module == "torch"
            ):
                continue
            seen.setdefault(f"{module}.{cls.__qualname__}", cls)
    return [seen[k] for k in sorted(seen)]


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _canonical(node: Any) -> str:
    """A syntax tree as text, the same on every Python: each node's type and its fields by name,
    leaving out the empty ones (ast.dump omits them on 3.13 but not on 3.11, and 3.12 added
    `type_params`, which is empty unless used)."""
    if isinstance(node, ast.AST):
        fields = (
            f"{name}={_canonical(value)}"
            for name in node._fields
            if (value := getattr(node, name, None)) is not None and value != []
        )
        return f"{type(node).__name__}({', '.join(fields)})"
    if isinstance(node, list):
        return f"[{', '.join(_canonical(v) for v in node)}]"
    return repr(node)


def source_fingerprint(obj: Any) -> str | None:
    """The parsed source of a function (or method) as text, without comments, layout or docstrings,
    the same on every Python version; None when Python cannot find it (a function built by exec, a
    C function)."""
    fn = inspect.unwrap(getattr(obj, "__func__", obj))
    try:
        src = textwrap.dedent(inspect.getsource(fn))
        return _canonical(_strip_docstrings(ast.parse(src)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None


def _class_code(cls: type, helpers: dict[str, str]) -> str:
    """Each function defined in the class body, by name. Methods are read one by one (not the
    class): Python before 3.13 cannot find the source of a class defined in a notebook cell, but can
    its methods'. The student's functions they call are added to `helpers` (`_collect_helpers`)."""
    parts = [f"class {cls.__qualname__}({', '.join(b.__qualname__ for b in cls.__bases__)})"]
    for name, attr in sorted(vars(cls).items()):
        fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        if inspect.isfunction(fn):
            parts.append(f"{name}: {source_fingerprint(fn) or '<source not found>'}")
            _collect_helpers(fn, helpers)
    return "\n".join(parts)


def _collect_helpers(fn, helpers: dict[str, str], depth: int = 3) -> None:
    """The plain functions `fn` names that live in the student's own module (or notebook), with the
    ones they name in turn, `depth` levels down: name -> parsed source. Library functions (torch's,
    numpy's) are not the student's code and are left out."""
    if depth == 0:
        return
    for name in fn.__code__.co_names:
        target = fn.__globals__.get(name)
        if (
            inspect.isfunction(target)
            and target.__module__ == fn.__module__
            and f"{target.__module__}.{target.__qualname__}" not in helpers
        ):
            helpers[f"{target.__module__}.{target.__qualname__}"] = (
                source_fingerprint(target) or "<source not found>"
            )
            _collect_helpers(target, helpers, depth - 1)


class _OpRecorder(TorchFunctionMode):
    """Records each torch function a forward pass calls, with the shapes of the tensors it
    returns."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
        if not name.startswith(("Tensor.__get__", "_TensorBase.__get__")) and not name.endswith(
            "__get__"
        ):
            outs = out if isinstance(out, (tuple, list)) else (out,)
            shapes = [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]
            self.ops.append(f"{name}{shapes}")
        return out


def blank_batch(n: int = 2) -> torch.Tensor:
    """n blank CIFAR-sized images (zeros, i.e. the mean colour after normalisation), on the CPU."""
    return torch.zeros(n, 3, 32, 32)


def _is_lazy(t: torch.Tensor) -> bool:
    return isinstance(t, UninitializedTensorMixin)


def has_lazy_parameters(net: nn.Module) -> bool:
    """True while some parameter or buffer of `net` is still uninitialised (nn.Lazy* before its
    first forward)."""
    return any(_is_lazy(t) for t in (*net.parameters(), *net.buffers()))


def materialize(net: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """Give a network built from lazy modules its parameters, as plain PyTorch does on the first
    forward: one eval-mode forward of two blank images on `device` (default: where its parameters
    are), without gradients. The weights drawn for them come from the current random state, which is
    then put back as it was, so the run draws the same numbers as with any other network (and a
    seeded run reproduces them). Returns `net`.
    """
    if not has_lazy_parameters(net):
        return net
    if device is None:
        device = next((p.device for p in net.parameters() if not _is_lazy(p)), torch.device("cpu"))
    try:
        with kept_modes(net), forked_rng(), torch.no_grad():
            checked_forward(net.eval(), blank_batch().to(device))
    except NetworkError as e:
        raise NetworkError(f"{e} (while giving its lazy modules their parameters)") from e.__cause__
    return net


def network_identity(net: nn.Module, spec: str = "") -> dict[str, Any]:
    """The identity of `net`'s code (see the module docstring): {"name", "spec", "code", "layers",
    "forward", "parameters"}, each part a 16-hex-digit hash ("forward" is None when the forward pass
    fails)."""
    # as fit would first (uninitialised parameters cannot be copied); the random state is kept
    materialize(net)
    try:
        probe = copy.deepcopy(net).cpu().float()
    except Exception:  # noqa: BLE001 - an attribute that cannot be copied (an open file...): read the network itself
        probe = net
    recorder = _OpRecorder()
    try:
        x = blank_batch().to(next((p.device for p in probe.parameters()), torch.device("cpu")))
        # eval mode: BatchNorm statistics stay as they are; only the network's own operations are
        # recorded
        with kept_modes(probe), forked_rng(), torch.no_grad(), recorder:
            probe.eval()(x)
        forward = _hash("\n".join(recorder.ops))
    except Exception:  # noqa: BLE001 - a failing forward is refused elsewhere (models.check), in one line
        forward = None
    shapes = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in probe.state_dict().items())
    cls = type(net)
    return {
        "version": VERSION,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "torch": _release(torch.__version__),
        "name": f"{cls.__module__}:{cls.__qualname__}",
        "spec": spec,
        "code": _code_hash(probe),
        "layers": _hash(repr(probe) + "\n" + _flags(probe)),
        "forward": forward,
        "parameters": _hash(shapes),
    }


def _code_hash(net: nn.Module) -> str:
    helpers: dict[str, str] = {}
    classes = [_class_code(c, helpers) for c in _own_classes(net)]
    return _hash("\n\n".join(classes + [f"def {k}: {v}" for k, v in sorted(helpers.items())]))


def _flags(net: nn.Module) -> str:
    """The bool / str / None attributes of the modules written outside torch (constructor options
    such as ``self.as_dict = True``), which repr does not show. Numbers are left out: a counter a
    forward updates would make the same network look changed."""
    own = set(_own_classes(net))
    return "\n".join(
        f"{name}.{k}={v!r}"
        for name, m in net.named_modules()
        if type(m) in own
        for k, v in sorted(vars(m).items())
        if not k.startswith("_") and k != "training" and (v is None or isinstance(v, (bool, str)))
    )


def comparable(saved: dict | None) -> bool:
    """True when `saved` was recorded under this VERSION of the identity (so a difference is the
    network's)."""
    return bool(saved) and saved.get("version") == VERSION


def _release(version: str) -> str:
    """ "2.14" of "2.14.1+cu130": the torch release whose names a record uses."""
    return ".".join(version.split("+")[0].split(".")[:2])


def uncompared(saved: dict | None, now: dict) -> list[str]:
    """The parts (of PARTS) that are not compared between a record and the network now: "layers"
    and "forward" when the record was made under another torch release (torch's own names for
    layers and operations change between releases; the code and parameter shapes do not)."""
    if comparable(saved) and saved.get("torch") != now.get("torch"):
        return ["layers", "forward"]
    return []


def identity_changes(saved: dict | None, now: dict) -> list[str]:
    """The parts (of PARTS) in which the network `now` differs from the one recorded as `saved`,
    among those that compare (`uncompared`); a record of another version (an older cifarkit's run)
    is not compared: a change there may be cifarkit's, not yours.
    """
    if not comparable(saved):
        return []
    skip = uncompared(saved, now)
    return [p for p in PARTS if p in saved and p not in skip and saved[p] != now.get(p)]


def describe_changes(changed: list[str]) -> str:
    """E.g. "forward and code" for ["forward", "code"]."""
    words = [WHAT_CHANGED[p] for p in changed]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
