"""Networks and the name -> constructor registry.

`registry` holds the registry and turns a model spec (a registered name, or an import path such as
``my_net.py:Net(width=32)``) into a network; `seed` and `compact` are the built-in networks,
registered as "seed" and "compact" when this package is imported (so every user of the registry sees
them).
"""

from . import compact, seed  # noqa: F401 (registers the built-in networks)
from .check import NetworkError, as_batch, checked_forward, probe
from .compact import CompactNet
from .registry import (
    MODELS,
    build_model,
    check_model_spec,
    count_parameters,
    normalize_spec,
    own_network,
    register,
    spec_string,
)
from .seed import SeedNet

__all__ = [
    "MODELS",
    "CompactNet",
    "NetworkError",
    "SeedNet",
    "as_batch",
    "build_model",
    "checked_forward",
    "probe",
    "check_model_spec",
    "count_parameters",
    "normalize_spec",
    "own_network",
    "register",
    "spec_string",
]
