"""Which run a call continues: the config a resumed run trains with, what resume="auto" finds in a
folder, and whether the network passed now is the one that trained it (`check_same_network`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from torch import nn

from ..base import ConfigError
from ..config import (
    BOOKKEEPING_FIELDS,
    RUNTIME_FIELDS,
    TrainConfig,
    config_differences,
    explicit_fields,
)
from ..models import build_model
from ..models.identity import (
    comparable,
    describe_changes,
    identity_changes,
    network_identity,
    uncompared,
)
from ..models.keep import forked_rng
from .checkpoint import CheckpointError, config_from_checkpoint, load_checkpoint
from .files import CONFIG, LAST
from .lock import RunDirError, advice
from .state import damaged_message, run_state


def resume_config(
    saved: TrainConfig, requested: TrainConfig, explicit: set[str] | None, path
) -> TrainConfig:
    """The config a resumed run continues with: the saved one, with the requested runtime fields on
    top.

    A field that would change what the run computes (the network, the recipe) and was set on purpose
    (`config.explicit_fields`: the CLI's given options, else every field that differs from its
    default) is refused with one line instead of being ignored. The data source comes from the run
    unless a new one is given (then `fit` checks it holds the same images).
    """
    explicit = explicit_fields(requested, explicit)
    ignore = set(RUNTIME_FIELDS) | set(BOOKKEEPING_FIELDS)
    changed = sorted(
        k
        for k in explicit - ignore
        if getattr(requested, k) != getattr(saved, k)
        and not (k == "model" and saved.model.startswith("object:"))
    )
    if changed:
        detail = ", ".join(
            f"{k}={getattr(requested, k)!r} (run: {getattr(saved, k)!r})" for k in changed[:3]
        )
        raise ConfigError(
            f"--resume continues {path} as it was configured; refusing to change {detail}. "
            "Start a new run (another --out) to train differently"
        )
    keep = {
        k: getattr(requested, k)
        for k in RUNTIME_FIELDS
        if k in explicit or k in ("device", "progress")
    }
    if "data" not in explicit or requested.data is None:
        keep.pop("data", None)
    return dataclasses.replace(saved, **keep, out=str(Path(path).parent))


def network_now(cfg: TrainConfig, model=None) -> dict:
    """The identity (`models.identity`) of the network a call would train: `model` when it is a
    network object, else a throwaway built from it (a factory) or from `cfg.model`, with the random
    state put back.
    """
    if not isinstance(model, nn.Module):
        with forked_rng():
            model = build_model(model if model is not None else cfg.model, cfg.dropout)
    return network_identity(model, cfg.model)


def check_same_network(
    saved: dict | None, now: dict, run_dir: str | Path, speak: str = "python"
) -> None:
    """Refuse in one line (RunDirError) to continue or load the run in `run_dir` with a network
    whose code differs from the one it recorded (`models.identity`: code, layers, forward, parameter
    shapes). A run an older cifarkit wrote records none: a line says it cannot be checked."""
    if not comparable(saved):
        print(
            f"note: {run_dir} was trained by {'another' if saved else 'an older'} cifarkit that"
            f" recorded the network's code {'differently' if saved else 'not at all'}, so cifarkit"
            " cannot check that the network passed now is the one that trained it"
        )
        return
    skipped = uncompared(saved, now)
    if skipped:
        print(
            f"note: {run_dir} was trained under torch {saved.get('torch')}, this is torch"
            f" {now.get('torch')}: its network's code and parameter shapes are compared, its"
            f" {describe_changes(skipped)} not (torch names them differently between releases)"
        )
    changed = identity_changes(saved, now)
    if changed:
        raise RunDirError(
            f"the network's {describe_changes(changed)} changed since {run_dir} was trained "
            f"({saved.get('name', 'a network')}): {advice(speak, 'overwrite')} to train it again, "
            f"or {advice(speak, 'out')} to keep both"
        )


def auto_resume(
    cfg: TrainConfig, overwrite: bool, network_now: Callable[[], dict]
) -> str | Path | None:
    """What fit(cfg, resume="auto") does with `cfg.out`: None (start afresh: empty, or `overwrite`),
    the last.pt to resume (an unfinished run with the same settings and network), or "finished" (a
    finished one: load it). A run with other settings, one made by other network code
    (`network_now()` gives the identity of the network passed now) and a damaged folder (a best.pt
    or history without a loadable last.pt) are refused in one line, and nothing is written."""
    run_dir = Path(cfg.out)
    state = run_state(run_dir)
    if overwrite or state == "empty":
        return None
    if state == "damaged":
        raise RunDirError(damaged_message(run_dir, "python"))
    if state == "finished":
        try:
            saved = TrainConfig.from_dict(json.loads((run_dir / CONFIG).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise RunDirError(
                f"{run_dir} holds a finished run whose {CONFIG} cannot be read ({e}); "
                f"{advice('python', 'overwrite')} to train again, or {advice('python', 'out')}"
            ) from None
    try:
        ckpt = load_checkpoint(run_dir / LAST, mmap=True)
    # a finished run whose last.pt went missing: its weights cannot be loaded
    except CheckpointError as e:
        raise RunDirError(
            f"{e}; {run_dir} holds a finished run, but without its {LAST} it cannot be loaded: "
            f"{advice('python', 'overwrite')} to train again, or {advice('python', 'out')}"
        ) from None
    if state == "unfinished":
        saved = config_from_checkpoint(ckpt, run_dir / LAST)
    diff = config_differences(saved, cfg)
    if diff:
        raise RunDirError(
            f"{run_dir} holds a{'n' if state == 'unfinished' else ''} {state} run with other"
            f" settings ({'; '.join(diff[:3])}); {advice('python', 'overwrite')} to replace it, or"
            f" {advice('python', 'out')}"
        )
    check_same_network(ckpt.get("network"), network_now(), run_dir)
    return "finished" if state == "finished" else run_dir / LAST
