"""Training and evaluation steps: pure functions that take a model and a loader and return a dict.

The caller (`trainer.fit`, the notebook) keeps the history; nothing here writes files.
"""
from __future__ import annotations

import contextlib
import copy
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from .config import CifarkitError, TrainConfig


class DivergenceError(CifarkitError):
    """The training loss became NaN or infinite."""


# ---------------------------------------------------------------- hardware
def resolve_device(name: str = "auto") -> torch.device:
    """"auto": CUDA if present, then Apple MPS, then CPU; otherwise the named device."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise CifarkitError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CifarkitError("device 'cuda' requested but torch sees no CUDA GPU")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise CifarkitError("device 'mps' requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions natively: AMX (Sapphire Rapids+) or AVX-512-BF16 (Zen 4+)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None) or getattr(torch._C._cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_fast_bf16() else None
        return None  # MPS: autocast support varies by macOS version; fp32 is the safe default
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for `dtype`, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------- optimiser and schedule
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD. Weight decay only on conv / linear weights (decaying BatchNorm parameters and biases hurts);
    BatchNorm parameters may get a larger learning rate (`bias_lr_scale`: airbench uses 64 for its
    BatchNorm shifts, whose gradients are small)."""
    norm = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim <= 1 and id(p) not in norm], "weight_decay": 0.0},
              {"params": [p for p in params if id(p) in norm], "weight_decay": 0.0,
               "lr": cfg.lr * cfg.bias_lr_scale}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


def lr_factor(step: int, total: int, schedule: str, warmup: float, start: float = 0.0, end: float = 0.0) -> float:
    """Multiplier on the peak learning rate at `step` of `total` for the schedules built by hand.

    "linear": from `start` up to 1 over the first `warmup` fraction of the steps, then down to `end`.
    """
    if schedule == "constant":
        return 1.0
    w = max(1, round(warmup * total))
    if step < w:
        return start + (1 - start) * (step + 1) / w
    return end + (1 - end) * max(0.0, (total - step) / max(1, total - w))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step LR schedule: torch's OneCycleLR, or warmup + linear decay, or constant."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total, pct_start=cfg.warmup or 0.01,
            anneal_strategy="linear", cycle_momentum=False, div_factor=25.0, final_div_factor=1e3)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _LrLambda(total, cfg.schedule, cfg.warmup, cfg.lr_start, cfg.lr_end))


class _LrLambda:
    """A picklable schedule (LambdaLR saves an object's __dict__ in its state, not a closure)."""

    def __init__(self, total: int, schedule: str, warmup: float, start: float, end: float):
        self.total, self.schedule, self.warmup, self.start, self.end = total, schedule, warmup, start, end

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total, self.schedule, self.warmup, self.start, self.end)


class EMA:
    """Exponential moving average of a model's weights and BatchNorm statistics.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) so early averages are not dominated by the
    random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema = [t for t in self.module.state_dict().values() if t.dtype.is_floating_point]
        cur = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
        torch._foreach_lerp_(ema, cur, 1.0 - d)
        for e, c in zip(self.module.buffers(), model.buffers()):
            if not e.dtype.is_floating_point:
                e.copy_(c)  # BatchNorm's num_batches_tracked

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay, self.updates = state["decay"], state["updates"]


class Lookahead:
    """airbench's weight averaging: every `every` steps, pull an EMA towards the weights and copy it back.

    It starts after `start` of the `total` steps; the decay rises as 0.95**every * (step / total)**3, so
    the averaging is weak while the learning rate is high and strong at the end of training.
    """

    def __init__(self, total: int, start: float = 0.25, every: int = 5):
        self.total, self.start, self.every = total, round(start * total), every
        self.step, self.state = 0, None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.step += 1
        if self.step < self.start or self.step % self.every:
            return
        weights = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
        if self.state is None:
            self.state = [t.detach().clone() for t in weights]
            return
        decay = 0.95 ** self.every * (self.step / self.total) ** 3
        torch._foreach_lerp_(self.state, weights, 1.0 - decay)
        torch._foreach_copy_(weights, self.state)

    @torch.no_grad()
    def sync(self, model: nn.Module) -> None:
        """Copy the average into the weights (done at the end of each epoch, before evaluation)."""
        if self.state is not None:
            weights = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
            torch._foreach_copy_(weights, self.state)

    def state_dict(self) -> dict:
        return {"step": self.step, "state": self.state}

    def load_state_dict(self, d: dict) -> None:
        self.step, self.state = d["step"], d["state"]


# ---------------------------------------------------------------- train / evaluate
def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler=None, *,
                    amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                    label_smoothing: float = 0.0, ema: EMA | Lookahead | None = None, epoch: int = 0,
                    progress: bool = True) -> dict:
    """One pass over `loader`. Returns loss (mean per image), accuracy (%), counts, seconds and the LRs.

    The bar reads like the seed's log: ``Loss=... Batch_id=... Accuracy=...``. The loss is checked every
    step and a NaN / Inf raises DivergenceError before the optimiser applies it.
    """
    from tqdm import tqdm  # plain text bars: they read well in a terminal, a saved notebook and on GitHub

    device = next(model.parameters()).device
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, lrs = 0, []
    sync_every = 1 if device.type == "cpu" else 20  # .item() stalls a GPU pipeline; on CPU it is free
    start = time.perf_counter()
    bar = tqdm(loader, disable=not progress, ncols=110, mininterval=2.0, file=sys.stdout)
    for step, (x, y) in enumerate(bar):
        with autocast(device, amp_dtype):
            out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
        last = step == len(loader) - 1
        if step % sync_every == 0 or last:
            value = loss.item()
            if not math.isfinite(value):
                lr = optimizer.param_groups[0]["lr"]
                raise DivergenceError(
                    f"loss is {value} at epoch {epoch + 1}, step {step + 1} (lr {lr:.4g}); stopping. "
                    "Lower --lr (or use --precision fp32) and start again")
            if progress:
                acc = 100.0 * (correct.item() + (out.argmax(1) == y).sum().item()) / (seen + len(y))
                bar.set_description(f"Loss={value:.4f} Batch_id={step} Accuracy={acc:.2f}", refresh=False)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
    seconds = time.perf_counter() - start
    return {"loss": loss_sum.item() / seen, "accuracy": 100.0 * correct.item() / seen,
            "correct": int(correct.item()), "total": seen, "seconds": seconds,
            "images_per_second": seen / seconds, "lr": lrs[-1], "lrs": lrs}


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
                logits = 0.5 * mirror_avg(x) + 0.25 * sum(mirror_avg(s.contiguous(memory_format=torch.channels_last))
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
