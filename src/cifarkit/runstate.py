"""What a run keeps besides the model: its history files, RNG states, hardware, and the config a resumed run
continues with. Used by `trainer.fit`; nothing here trains.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import random
import sys
from pathlib import Path

import torch

from .checkpoint import atomic_write_json, atomic_write_text
from .config import ConfigError, TrainConfig
from .hardware import hardware_string  # noqa: F401 (recorded in results.json)

CSV_COLUMNS = ("epoch", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "lr", "train_seconds",
               "eval_seconds", "images_per_second")
# Fields a resumed run may take from the new call: how it runs, not what it computes.
RUNTIME_FIELDS = ("device", "progress", "compile", "cuda_graphs", "check_every", "eval_batch_size", "data",
                  "data_root", "precision", "channels_last")


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB (None where the OS does not report it)."""
    try:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(kb / 1024 / (1024 if sys.platform == "darwin" else 1), 1)  # macOS reports bytes
    except (ImportError, OSError):
        return None


def write_history(run_dir: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())
    atomic_write_json(run_dir / "history.json", history)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_config(saved: TrainConfig, requested: TrainConfig, explicit: set[str] | None, path) -> TrainConfig:
    """The config a resumed run continues with: the saved one, with the requested runtime fields on top.

    A field that would change what the run computes (the network, the recipe) and was asked for
    explicitly (`explicit`: the options given; None: every field that differs from its default) is refused
    with one line instead of being ignored. The data source comes from the run unless a new one is given
    (then `_setup` checks it holds the same images).
    """
    defaults = TrainConfig()
    if explicit is None:
        explicit = {f.name for f in dataclasses.fields(TrainConfig)
                    if f.name != "model" and getattr(requested, f.name) != getattr(defaults, f.name)}
        if requested.model_name != defaults.model_name:
            explicit.add("model")
    ignore = set(RUNTIME_FIELDS) | {"out", "data_fingerprint"}
    changed = sorted(k for k in explicit - ignore if k != "model" and getattr(requested, k) != getattr(saved, k))
    if "model" in explicit and requested.model_name != saved.model_name and not saved.model_name.startswith("object:"):
        changed.insert(0, "model")
    if changed:
        detail = ", ".join(f"{k}={getattr(requested, k) if k != 'model' else requested.model_name!r} "
                           f"(run: {getattr(saved, k) if k != 'model' else saved.model_name!r})" for k in changed[:3])
        raise ConfigError(f"--resume continues {path} as it was configured; refusing to change {detail}. "
                          "Start a new run (another --out) to train differently")
    keep = {k: getattr(requested, k) for k in RUNTIME_FIELDS if k in explicit or k in ("device", "progress")}
    if "data" not in explicit or requested.data is None:
        keep.pop("data", None)
    model = requested.model if not isinstance(requested.model, str) else saved.model
    return dataclasses.replace(saved, **keep, model=model, out=str(Path(path).parent))


def config_differences(saved: TrainConfig, requested: TrainConfig) -> list[str]:
    """The fields (as 'name=requested (run: saved)') in which `requested` would train differently from the
    run `saved` came from: every field but the runtime ones (RUNTIME_FIELDS), the folder and the fingerprint."""
    ignore = set(RUNTIME_FIELDS) | {"out", "data_fingerprint"}
    a, b = requested.to_dict(), saved.to_dict()
    return [f"{k}={a[k]!r} (run: {b[k]!r})" for k in a if k not in ignore and a[k] != b.get(k)]
