"""Which run a call continues: the config a resumed run trains with, and what resume="auto" finds in a folder."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..base import ConfigError
from ..config import BOOKKEEPING_FIELDS, RUNTIME_FIELDS, TrainConfig, config_differences, explicit_fields
from .checkpoint import config_from_checkpoint, load_checkpoint
from .files import CONFIG, LAST
from .lock import RunDirError, advice
from .state import run_state


def resume_config(saved: TrainConfig, requested: TrainConfig, explicit: set[str] | None, path) -> TrainConfig:
    """The config a resumed run continues with: the saved one, with the requested runtime fields on top.

    A field that would change what the run computes (the network, the recipe) and was set on purpose
    (`config.explicit_fields`: the CLI's given options, else every field that differs from its default) is
    refused with one line instead of being ignored. The data source comes from the run unless a new one is
    given (then `fit` checks it holds the same images).
    """
    explicit = explicit_fields(requested, explicit)
    ignore = set(RUNTIME_FIELDS) | set(BOOKKEEPING_FIELDS)
    changed = sorted(k for k in explicit - ignore if getattr(requested, k) != getattr(saved, k)
                     and not (k == "model" and saved.model.startswith("object:")))
    if changed:
        detail = ", ".join(f"{k}={getattr(requested, k)!r} (run: {getattr(saved, k)!r})" for k in changed[:3])
        raise ConfigError(f"--resume continues {path} as it was configured; refusing to change {detail}. "
                          "Start a new run (another --out) to train differently")
    keep = {k: getattr(requested, k) for k in RUNTIME_FIELDS if k in explicit or k in ("device", "progress")}
    if "data" not in explicit or requested.data is None:
        keep.pop("data", None)
    return dataclasses.replace(saved, **keep, out=str(Path(path).parent))


def auto_resume(cfg: TrainConfig, overwrite: bool) -> str | Path | None:
    """What fit(cfg, resume="auto") does with `cfg.out`: None (start afresh: empty, or `overwrite`), the last.pt
    to resume (an unfinished run with the same settings), or "finished" (a finished one: load it). A run with
    other settings is refused in one line."""
    run_dir = Path(cfg.out)
    state = run_state(run_dir)
    if overwrite or state == "empty":
        return None
    if state == "finished":
        try:
            saved = TrainConfig.from_dict(json.loads((run_dir / CONFIG).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise RunDirError(f"{run_dir} holds a finished run whose {CONFIG} cannot be read ({e}); "
                              f"{advice('python', 'overwrite')} to train again, or {advice('python', 'out')}") from None
    else:
        saved = config_from_checkpoint(load_checkpoint(run_dir / LAST), run_dir / LAST)
    diff = config_differences(saved, cfg)
    if diff:
        raise RunDirError(f"{run_dir} holds a{'n' if state == 'unfinished' else ''} {state} run with other settings "
                          f"({'; '.join(diff[:3])}); {advice('python', 'overwrite')} to replace it, or "
                          f"{advice('python', 'out')}")
    return "finished" if state == "finished" else run_dir / LAST
