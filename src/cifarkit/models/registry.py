"""The name -> constructor registry, and model specs: how a network is named in a config and
rebuilt.

A spec is a registered name ("seed"), or an import path: "file.py:Class(k=v)" (stored relative to
the working directory when the file lies under it) or "package.module:Class". A network passed as an
object is recorded as "module:Class" when that import rebuilds it with no arguments, else as
"object:Class": a fresh process then asks for an import path instead of guessing.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..base import ConfigError, first_line, format_call, parse_call, portable_path, show_path
from .check import user_frame
from .identity import materialize

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, constructor: Callable[..., nn.Module] | None = None):
    """Make a network constructible by name: `@register("mine")` on a class, or `register("mine",
    Net)`.

    Registering a name again replaces the old entry (a notebook cell must survive "run all" twice).
    A name lives only in the process that registered it; give an import path to rebuild elsewhere.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"model name must be a non-empty string without ':', got {name!r}")

    def wrap(cls):
        MODELS[name] = cls
        if isinstance(cls, type):
            cls.registry_name = name
        return cls

    return wrap(constructor) if constructor is not None else wrap


def load_attr(path: str, option: str = "--model") -> Callable[..., nn.Module]:
    """'file.py:Class' (relative to the working directory) or 'package.module:Class' -> the object
    (a class or function; `option` names where the path was given, for the messages)."""
    where, _, attr = path.rpartition(":")
    if where.endswith(".py"):
        file = Path(where).expanduser()
        if not file.is_file():
            here = "" if file.is_absolute() else f" (looked in {show_path(os.getcwd())})"
            raise ConfigError(f"model file not found: {show_path(file)}{here}")
        mod_name = f"cifarkit_user_{file.stem}_{abs(hash(str(file.resolve()))) % 10**8}"
        spec = importlib.util.spec_from_file_location(mod_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        # the file runs a script when imported: exit() / sys.exit() at the top level
        except SystemExit as e:
            del sys.modules[mod_name]
            raise ConfigError(
                f"importing {file} called sys.exit({e.code!r}): move the script part of the file "
                "under if __name__ == '__main__':"
            ) from None
        except Exception as e:
            del sys.modules[mod_name]
            raise ConfigError(
                f"importing {file} failed: {type(e).__name__}: {first_line(e)}{user_frame(e)}"
            ) from None
    else:
        try:
            module = importlib.import_module(where)
        except SystemExit as e:
            raise ConfigError(
                f"importing module {where!r} called sys.exit({e.code!r}): move the script part"
                " under if __name__ == '__main__':"
            ) from None
        except Exception as e:
            raise ConfigError(
                f"cannot import module {where!r} for {option} {path!r}: {type(e).__name__}: "
                f"{first_line(e)}"
            ) from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{where} has no {attr!r} (from {option} {path!r})")
    if not callable(obj):
        raise ConfigError(
            f"{path} is not a class or function"
            + (" that builds a network" if option == "--model" else "")
        )
    return obj


def spec_string(model: Any) -> str:
    """How a model choice is recorded in config.json: a string as given; for an object or factory
    "module:Class" where importing that module and calling Class() rebuilds it, else "object:Class"
    (a container such as nn.Sequential, a class that needs arguments, a class defined in a
    notebook).
    """
    if isinstance(model, str):
        return model
    if isinstance(model, functools.partial) and _plain_keywords(model):
        # its arguments are in no import path, but a notebook's class can be called with them
        # again (check-notebook --verify)
        return f"object:{format_call(model.__name__, model.keywords)}"
    if isinstance(model, (functools.partial, ObjectCopies)):
        # its arguments (or the object's weights and later edits) are not in any import path
        return f"object:{model.__name__}"
    cls = model if isinstance(model, type) else type(model)
    if not isinstance(model, (nn.Module, type)) and hasattr(model, "__qualname__"):
        cls = model  # a factory function
    module, qual = (
        getattr(cls, "__module__", ""),
        getattr(cls, "__qualname__", type(model).__name__),
    )
    importable = (
        module
        and module != "__main__"
        and "<" not in qual
        and not module.startswith("cifarkit_user_")
        and not module.startswith("torch.")
        and _takes_no_arguments(cls)
    )
    return f"{module}:{qual}" if importable else f"object:{qual}"


class ObjectCopies:
    """Fresh deep copies of a network object as it was when given (`own_network`): each call
    returns a new copy, so that no cell trains the object itself and each starts from the weights
    it had then (drawn when the object was made, not from cfg.seed). `fit` and `lr_find` take one
    copy and treat it as the object passed."""

    def __init__(self, net: nn.Module):
        self.net = copy.deepcopy(net)
        self.__name__ = self.__qualname__ = type(net).__qualname__

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self.net)

    def __repr__(self) -> str:
        return f"copies of a {self.__name__} object"


def own_network(network: Any) -> Callable[[], nn.Module]:
    """The notebook's NETWORK as its cells use it: a zero-argument maker of fresh networks with a
    `__name__` (the run folder's and the figures' name). A class or function is returned as it is;
    functools.partial(Net, width=32) is named "Net"; an nn.Module object (NETWORK = Net()) becomes
    `ObjectCopies` of it. Anything else is refused in one line that says what to write."""
    if isinstance(network, ObjectCopies):  # given again (a cell run twice): as it is
        return network
    if isinstance(network, nn.Module):
        return ObjectCopies(network)
    if isinstance(network, functools.partial):
        named = functools.partial(network.func, *network.args, **network.keywords)
        named.__name__ = getattr(network.func, "__name__", "network")
        return named
    if (isinstance(network, type) and issubclass(network, nn.Module)) or inspect.isfunction(
        network
    ):
        if not network.__name__.isidentifier():  # a lambda: its folder would be "<lambda>"
            network.__name__ = network.__qualname__ = "network"
        return network
    raise ConfigError(
        f"NETWORK is {type(network).__name__} {first_line(repr(network))[:60]}: set it to your"
        " network's class (NETWORK = StudentNet), an object of it (NETWORK = StudentNet()) or"
        " functools.partial(StudentNet, width=32)"
    )


def _plain_keywords(call: functools.partial) -> bool:
    """True when a partial has keyword arguments only, each a number, bool, None or a plain word:
    what a spec can hold and `parse_call` reads back."""
    return not call.args and all(
        v is None
        or isinstance(v, (bool, int, float))
        or (isinstance(v, str) and v.replace("_", "").isalnum())
        for v in call.keywords.values()
    )


def display_name(spec: str) -> str:
    """A model spec as a person names the network: "seed" stays "seed"; "object:StudentNet",
    "my_net.py:StudentNet(width=2)" and "pkg.mod:StudentNet" are "StudentNet"."""
    if ":" not in spec:
        return spec
    return spec.rsplit(":", 1)[1].split("(", 1)[0].rsplit(".", 1)[-1] or spec


def _takes_no_arguments(ctor: Callable) -> bool:
    """True when `ctor()` can be called: every parameter has a default (or is *args / **kwargs)."""
    try:
        params = inspect.signature(ctor).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
    )


def normalize_spec(spec: str) -> str:
    """`spec` with its "file.py" path as a config keeps it (`base.portable_path`: relative to the
    working directory when the file lies under it, so "./my_net.py", "my_net.py" and its absolute
    path are one model, and nothing of this machine is saved); any other spec unchanged. A fresh
    process elsewhere finds the file through the run folder (`runfolder.files.rebase_paths`)."""
    where, sep, call = spec.rpartition(":")
    if sep and where.endswith(".py") and not spec.startswith("object:"):
        return f"{portable_path(where)}:{call}"
    return spec


def check_model_spec(model: Any) -> None:
    """ConfigError unless `model` names a registered network, is an import path, or is a module /
    factory."""
    if isinstance(model, nn.Module) or (callable(model) and not isinstance(model, str)):
        return
    if not isinstance(model, str):
        raise ConfigError(
            f"model must be a name, an import path or an nn.Module, got {type(model).__name__}"
        )
    if model.startswith("object:"):
        # a run that trained an object; rebuilding it needs the object again (see build_model)
        return
    if ":" in model:
        where, _, call = model.rpartition(":")
        parse_call(call, "model")
        if not where:
            raise ConfigError(
                f"bad import path {model!r}: expected file.py:Class or package.module:Class"
            )
        return
    if model not in MODELS:
        raise ConfigError(
            f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}, or an import path "
            "file.py:Class / package.module:Class"
        )


def build_model(model: Any, dropout: float = 0.0, **kwargs: Any) -> nn.Module:
    """The network a spec names (a registered name or an import path; a factory is called), freshly
    built; an nn.Module object is returned as it is. `kwargs` go to the constructor (an import
    path's own arguments take precedence), e.g. build_model("compact", widths=(32, 64, 96)).

    `dropout` is passed only to constructors that take it; asking for dropout from one that does not
    is an error rather than silently ignored.
    """
    if isinstance(model, nn.Module):
        return model
    kwargs = dict(kwargs)
    if isinstance(model, str):
        if model.startswith("object:"):
            raise ConfigError(
                f"this run trained a network passed as an object ({model[7:]}); a new process"
                " cannot rebuild it: pass the network again (fit(cfg, model=Net(), resume=...)) or"
                " give an import path such as my_net.py:Net"
            )
        if ":" in model:
            where, _, call = model.rpartition(":")
            name, given = parse_call(call, "model")
            kwargs.update(given)
            if any(k.startswith("_") for k in kwargs):
                raise ConfigError(
                    f"model arguments must be keywords, e.g. {name}(width=32); got {call!r}"
                )
            ctor = load_attr(f"{where}:{name}")
        else:
            check_model_spec(model)
            ctor = MODELS[model]
    else:
        ctor = model
    try:
        params = inspect.signature(ctor).parameters
        takes_dropout = "dropout" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_dropout = False
    if takes_dropout and "dropout" not in kwargs and ctor in MODELS.values():
        kwargs["dropout"] = dropout
    elif dropout and "dropout" not in kwargs:
        if not takes_dropout:
            raise ConfigError(
                f"dropout={dropout} was asked for, but {getattr(ctor, '__name__', ctor)} takes no "
                "dropout argument: set dropout inside your network"
            )
        kwargs["dropout"] = dropout
    try:
        net = ctor(**kwargs)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"building the network {spec_string(model)} failed: {type(e).__name__}: "
            f"{first_line(e)}{user_frame(e)}"
        ) from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{spec_string(model)} returned {type(net).__name__}, not an nn.Module")
    # a network of lazy modules is whole from here on, as after plain PyTorch's first forward
    return materialize(net)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """All parameters (frozen ones count towards a size budget too), or only the trainable ones.
    Lazy modules are given their parameters first (`identity.materialize`), as a first forward
    would."""
    materialize(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def passed_object_notes(spec: str, model: Any, factory: Any, resumed: bool) -> list[str]:
    """What `fit` says about a network passed as an object or factory: how it is recorded (and
    whether a fresh process can rebuild it), and that an object's weights were drawn before fit
    seeded anything.
    """
    notes = []
    if model is not None or factory is not None:
        notes.append(
            f"note: the network was passed as an object and is recorded as {spec!r}; a fresh"
            " process (evaluate, export, --resume) can rebuild it only from an import path such as"
            " my_net.py:Net"
            if spec.startswith("object:")
            else (
                "note: the network was passed as an object; a fresh process rebuilds it as"
                f" {spec}()"
            )
        )
    if model is not None and not resumed:
        notes.append(
            "note: this network object's weights were drawn before fit seeded anything, so cfg.seed"
            " does not reproduce them (results.json: seeded_init false); pass the class instead"
            " (model=Net) to have fit build it from the seed"
        )
    return notes
