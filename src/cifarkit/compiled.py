"""torch.compile / CUDA graphs as a wrapper that falls back to eager, for good, the first time it
fails.

`prepare_train_model` returns the module to train with; `guarded(model, fn)` runs one step's work
(forward, loss, backward) and, when a compiled model's code fails there, prints one line and runs it
again eagerly. The training step (`training.step.TrainStep`) calls it, so no loop needs to know
about compiling.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

T = TypeVar("T")


class CompiledModel(nn.Module):
    """A compiled `module` that falls back to `module` itself, for good, the first time it raises.

    torch.compile is lazy: tracing, kernel generation and CUDA-graph recording happen at the first
    calls (and again for a new batch shape), in the forward or, for the backward graph, in
    `loss.backward()`. The forward is guarded here; `guarded` (below) covers the backward as well.
    Its parameters and state_dict are `module`'s (the compiled callable is not registered as a
    submodule).
    """

    def __init__(self, module: nn.Module, compiled, what: str, cuda_graphs: bool):
        super().__init__()
        self.module = module
        self.__dict__["compiled"] = compiled  # unregistered: it shares `module`'s parameters
        self.what, self.cuda_graphs, self.active = what, cuda_graphs, True

    def forward(self, *args, **kwargs):
        if self.active:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any failure of the optimisation: run eagerly instead
                self.fall_back(e)
        return self.module(*args, **kwargs)

    def fall_back(self, error: BaseException) -> None:
        """Print one line and run eagerly from now on."""
        self.active = False
        print(f"{self.what}: falling back to eager ({_one_line(error)})", flush=True)

    def step_begin(self) -> None:
        """Tell CUDA graph trees a new training step starts (the last step's graph outputs may be
        reused)."""
        mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
        if self.active and self.cuda_graphs and mark is not None:
            mark()


def _one_line(error: BaseException) -> str:
    """'TypeName: first line' of an error, unwrapping torch.compile's BackendCompilerFailed."""
    error = getattr(error, "inner_exception", None) or error
    lines = [s.strip() for s in str(error).splitlines() if s.strip()]
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def prepare_train_model(
    model: nn.Module, *, device: torch.device, cuda_graphs: bool = True, compile: bool = False
) -> nn.Module:
    """The module to train with: `model` itself, or a `CompiledModel` sharing its parameters.

    On CUDA: cuda_graphs alone -> torch.compile(backend="cudagraphs"); cuda_graphs + compile ->
    torch.compile(mode="reduce-overhead") (Inductor kernels replayed as CUDA graphs); compile alone
    -> torch.compile(model). On CPU / MPS cuda_graphs does nothing; compile -> torch.compile(model).
    Evaluate with `model` itself (eval mode would record further graphs). If compiling or a first
    call fails (no Triton, an old GPU, an op the tracer cannot handle), one line is printed
    ("cuda_graphs: falling back to eager (Error: ...)") and training continues eagerly.
    """
    # Why torch.compile's CUDA graph trees and not a hand-captured torch.cuda.CUDAGraph: that needs
    # static input buffers, a side-stream warm-up, a second graph for the last, smaller batch
    # (50,000 % 256 = 80 images), gradients at fixed addresses, and it would silently bake a student
    # network's Python control flow into the graph. Dynamo guards on the shapes (dynamic=False: one
    # graph per batch shape, two per run), applies BatchNorm's running-statistics updates, and
    # splits the graph where it cannot capture. backend="cudagraphs" traces the model and replays
    # torch's own eager kernels (cuDNN convolutions): it takes seconds and generates no kernels, so
    # nothing needs Triton or minutes of compiling on Colab's two CPU cores, and a T4 behaves like
    # any other card. Neither variant is measured on a GPU yet.
    graphs = cuda_graphs and device.type == "cuda"
    if not (graphs or compile):
        return model
    what = "cuda_graphs" if graphs else "compile"
    try:
        if graphs and not compile:
            compiled = torch.compile(model, backend="cudagraphs", dynamic=False)
        elif graphs:
            compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
        else:
            compiled = torch.compile(model)
    except Exception as e:  # noqa: BLE001 - e.g. torch.compile unsupported on this Python / platform
        print(f"{what}: falling back to eager ({_one_line(e)})", flush=True)
        return model
    return CompiledModel(model, compiled, what, cuda_graphs=graphs)


def guarded(model: nn.Module, fn: Callable[[], T]) -> T:
    """fn(); if `model` is an active CompiledModel and fn fails (tracing, kernel generation or the
    compiled backward), print one line, switch `model` to eager for good and call fn() once more."""
    if not (isinstance(model, CompiledModel) and model.active):
        return fn()
    model.step_begin()
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - only the compiled code's failure is retried, eagerly
        model.fall_back(e)  # BatchNorm statistics may have moved once more: harmless
        return fn()
