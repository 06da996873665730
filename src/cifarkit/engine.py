"""Training and evaluation steps: pure functions that take a model and a loader and return a dict.

The caller (`trainer.fit`, the notebook) keeps the history; nothing here writes files. Optimisers, fp16 loss
scaling, schedules and weight averaging live in `cifarkit.optim` and are re-exported here.
"""
from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from .config import CifarkitError
from .hardware import (autocast, choose_channels_last, choose_precision, cpu_has_fast_bf16,  # noqa: F401 (re-exported)
                       is_nhwc, resolve_device, resolve_precision)
from .optim import (EMA, Lookahead, _LrLambda, lr_factor, make_grad_scaler,  # noqa: F401 (re-exported)
                    make_optimizer, make_scheduler)


class DivergenceError(CifarkitError):
    """The training loss became NaN or infinite."""


# ---------------------------------------------------------------- CUDA graphs / compile
class CompiledModel(nn.Module):
    """A compiled `module` that falls back to `module` itself, for good, the first time it raises.

    torch.compile is lazy: tracing, kernel generation and CUDA-graph recording happen at the first calls
    (and again for a new batch shape), in the forward or, for the backward graph, in `loss.backward()`.
    The forward is guarded here; `train_one_epoch` guards the backward and calls `fall_back` itself.
    Its parameters and state_dict are `module`'s (the compiled callable is not registered as a submodule).
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
        """Tell CUDA graph trees a new training step starts (the last step's graph outputs may be reused)."""
        mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
        if self.active and self.cuda_graphs and mark is not None:
            mark()


def _one_line(error: BaseException) -> str:
    """'TypeName: first line' of an error, unwrapping torch.compile's BackendCompilerFailed."""
    error = getattr(error, "inner_exception", None) or error
    lines = [s.strip() for s in str(error).splitlines() if s.strip()]
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def prepare_train_model(model: nn.Module, *, device: torch.device, cuda_graphs: bool = True,
                        compile: bool = False) -> nn.Module:
    """The module to train with: `model` itself, or a `CompiledModel` sharing its parameters.

    On CUDA: cuda_graphs alone -> torch.compile(backend="cudagraphs"); cuda_graphs + compile ->
    torch.compile(mode="reduce-overhead") (Inductor kernels replayed as CUDA graphs); compile alone ->
    torch.compile(model). On CPU / MPS cuda_graphs does nothing; compile -> torch.compile(model).
    Evaluate with `model` itself (eval mode would record further graphs). If compiling or a first
    call fails (no Triton, an old GPU, an op the tracer cannot handle), one line is printed
    ("cuda_graphs: falling back to eager (Error: ...)") and training continues eagerly.
    """
    # Why torch.compile's CUDA graph trees and not a hand-captured torch.cuda.CUDAGraph: that needs static
    # input buffers, a side-stream warm-up, a second graph for the last, smaller batch (50,000 % 256 = 80
    # images), gradients at fixed addresses, and it would silently bake a student network's Python control
    # flow into the graph. Dynamo guards on the shapes (dynamic=False: one graph per batch shape, two per run),
    # applies BatchNorm's running-statistics updates, and splits the graph where it cannot capture.
    # backend="cudagraphs" traces the model and replays torch's own eager kernels (cuDNN convolutions): it
    # takes seconds and generates no kernels, so nothing needs Triton or minutes of compiling on Colab's two
    # CPU cores, and a T4 behaves like any other card. Neither variant is measured on a GPU yet.
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


# ---------------------------------------------------------------- train / evaluate
def _forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                      amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None,
                      label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss and backward of one batch -> (correct predictions, loss), both still on the device."""
    with autocast(device, amp_dtype):
        out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
    hits = (out.argmax(1) == y).sum()  # before backward: a CUDA graph may reuse `out`'s memory afterwards
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return hits, loss


def _check_interval(device: torch.device, check_every: int) -> int:
    """Steps between host reads of the loss: every step on a CPU (reading is free), else `check_every`."""
    return 1 if device.type == "cpu" else max(1, check_every)


def _divergence(value: float, epoch: int, first: int, last: int, lrs: list[float]) -> DivergenceError:
    """The error for a non-finite loss somewhere in steps first..last (1-based) of `epoch` (0-based)."""
    where = f"step {last}" if first == last else f"between steps {first} and {last}"
    lo, hi = lrs[first - 1], lrs[last - 1]
    lr = f"lr {lo:.4g}" if f"{lo:.4g}" == f"{hi:.4g}" else f"lr {lo:.4g} to {hi:.4g}"
    return DivergenceError(f"loss is {value} at epoch {epoch + 1}, {where} ({lr}); stopping. "
                           "Lower --lr (or use --precision fp32) and start again")


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler=None, *,
                    amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                    label_smoothing: float = 0.0, ema: EMA | Lookahead | None = None, epoch: int = 0,
                    progress: bool = True, check_every: int = 50) -> dict:
    """One pass over `loader`. Returns loss (mean per image), accuracy (%), counts, seconds and the LRs.

    The bar reads like the seed's log: ``Loss=... Batch_id=... Accuracy=...``. Loss and correct counts are
    summed on the device; the host reads them only at check points: every `check_every` steps and at the
    last step on a GPU (each read drains the GPU's queue of launched work), every step on a CPU (free
    there). A NaN / Inf loss raises DivergenceError at the check, before that step's optimiser update
    (on a GPU the steps since the previous check were already applied). `model` may be a
    `prepare_train_model` result; if its compiled backward fails, training falls back to eager.
    """
    from tqdm import tqdm  # plain text bars: they read well in a terminal, a saved notebook and on GitHub

    device = next(model.parameters()).device
    model.train()
    every = _check_interval(device, check_every)
    compiled = model if isinstance(model, CompiledModel) else None
    # Summed per-image loss: NaN / Inf as soon as any step's loss was (cross-entropy is >= 0), so it is
    # the divergence flag too and costs no extra kernel per step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, lrs, checked, n = 0, [], 0, len(loader)  # checked: steps known to have a finite loss
    start = time.perf_counter()
    bar = tqdm(loader, disable=not progress, ncols=110, mininterval=2.0, file=sys.stdout)
    for step, (x, y) in enumerate(bar):
        if compiled is not None:
            compiled.step_begin()
        optimizer.zero_grad(set_to_none=True)
        try:
            hits, loss = _forward_backward(model, x, y, device, amp_dtype, scaler, label_smoothing)
        except Exception as e:  # noqa: BLE001 - only a compiled model's failure is retried, eagerly
            if compiled is None or not compiled.active:
                raise
            compiled.fall_back(e)  # BatchNorm statistics may have moved once more: harmless
            optimizer.zero_grad(set_to_none=True)
            hits, loss = _forward_backward(model, x, y, device, amp_dtype, scaler, label_smoothing)
        loss_sum += loss.detach() * len(y)
        correct += hits
        seen += len(y)
        lrs.append(optimizer.param_groups[0]["lr"])  # a Python float: no GPU sync
        if (step + 1) % every == 0 or step == n - 1:
            total, current, right = torch.stack([loss_sum, loss.detach(), correct.float()]).tolist()  # 1 sync
            if not math.isfinite(total):
                raise _divergence(total, epoch, checked + 1, step + 1, lrs)
            checked = step + 1
            if progress:
                bar.set_description(f"Loss={current:.4f} Batch_id={step} Accuracy={100.0 * right / seen:.2f}",
                                    refresh=False)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)
    total, right = torch.stack([loss_sum, correct.float()]).tolist()  # waits for the queued last step
    seconds = time.perf_counter() - start
    return {"loss": total / seen, "accuracy": 100.0 * right / seen, "correct": int(right), "total": seen,
            "seconds": seconds, "images_per_second": seen / seconds, "lr": lrs[-1], "lrs": lrs}


@torch.inference_mode()
def predict(model: nn.Module, loader, *, amp_dtype: torch.dtype | None = None,
            tta: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, 10) float32 and labels (N,), both on the CPU, in the loader's order.

    tta="flip" averages the logits of each image and its mirror image; "flip-translate" (airbench) gives
    that average weight 1/2 and the flip-averages of the image shifted by one pixel up-left and down-right
    (reflection padding) 1/4 each: six views.
    """
    device = next(model.parameters()).device
    model.eval()

    def mirror_avg(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(x).float() + model(x.flip(3)).float())

    probs, labels = [], []
    for x, y in loader:
        with autocast(device, amp_dtype):
            if tta == "none":
                logits = model(x).float()
            elif tta == "flip":
                logits = mirror_avg(x)
            else:
                padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
                shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
                layout = torch.channels_last if is_nhwc(x) else torch.contiguous_format  # as the loader gave it
                logits = 0.5 * mirror_avg(x) + 0.25 * sum(mirror_avg(s.contiguous(memory_format=layout))
                                                           for s in shifted)
        probs.append(logits.softmax(1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def score(probs: torch.Tensor, labels: torch.Tensor, *, verbose: bool = True, label: str = "Test") -> dict:
    """Loss (mean per image), accuracy (%) and counts from predicted probabilities; prints the seed's line."""
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    correct = int((probs.argmax(1) == labels).sum())
    total = len(labels)
    acc = 100.0 * correct / total
    if verbose:
        print(f"\n{label} set: Average loss: {loss:.4f}, Accuracy: {correct}/{total} ({acc:.2f}%)\n")
    return {"loss": loss, "accuracy": acc, "correct": correct, "total": total}


def evaluate(model: nn.Module, loader, *, amp_dtype: torch.dtype | None = None, tta: str = "none",
             verbose: bool = True, label: str = "Test") -> dict:
    """`predict` then `score`: loss, accuracy (%), counts and seconds on `loader`."""
    start = time.perf_counter()
    probs, labels = predict(model, loader, amp_dtype=amp_dtype, tta=tta)
    return {**score(probs, labels, verbose=verbose, label=label), "seconds": time.perf_counter() - start}
