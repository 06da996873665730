"""Leaving a network and the random streams as they were: what every probe, trace and measurement of
a network uses, so that looking at a network never changes the run it belongs to."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def kept_modes(net: nn.Module) -> Iterator[nn.Module]:
    """Every module's train / eval flag, put back on exit (whatever ran inside switched)."""
    modes = [(m, m.training) for m in net.modules()]
    try:
        yield net
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def forked_rng() -> Iterator[None]:
    """The torch (CPU and every CUDA device) and Python random states, put back on exit: what runs
    inside draws from the current state, and the caller's stream continues as if it had not run."""
    state = random.getstate()
    try:
        with torch.random.fork_rng(
            devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        ):
            yield
    finally:
        random.setstate(state)
