"""What a run leaves behind, read back: `FitResult` (what `fit` returns), the run's data checked against the
fingerprint it trained on, and a finished run loaded from its folder without training."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import TrainConfig
from .data.dataset import Cifar10, DataError, fingerprint
from .data.sources import load_cifar10
from .data.splits import make_splits
from .engine import model_for_config, predict_images
from .hardware import resolve_device
from .models import build_model, count_parameters
from .report import epoch_line, final_line
from .runfolder.checkpoint import config_from_checkpoint, load_checkpoint, load_weights, reported_weights
from .runfolder.files import LAST, RESULTS
from .runfolder.lock import RunDirError, advice


@dataclass
class FitResult:
    """What `fit` returns: the history it wrote, the evaluated model and the final test numbers."""

    config: TrainConfig
    history: list[dict]
    model: nn.Module
    run_dir: Path
    final: dict = field(default_factory=dict)  # results.json (empty if interrupted)
    interrupted: bool = False
    data: Cifar10 | None = None
    exit_code: int = 0  # 130 after Ctrl-C, 143 after SIGTERM
    loaded: bool = False  # resume="auto" found this run finished and loaded it instead of training

    def test_predictions(self, tta: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(test images uint8, labels, probabilities) of the evaluated model on the run's test split, with the
        run's device and precision, and test-time augmentation `tta` (default: the run's final TTA)."""
        images, labels = make_splits(self.config, self.data).test
        probs, labels = predict_images(self.model, images, labels, precision=self.config.precision,
                                       tta=tta or self.config.tta, batch_size=self.config.eval_batch_size)
        return images, labels, probs


def load_run_data(cfg: TrainConfig, data: Cifar10 | None, saved_fingerprint: str,
                  trained_on: str | None = None) -> tuple[Cifar10, str]:
    """The run's data and its fingerprint; on resume (`saved_fingerprint` given), refuse in one line a source
    that does not hold the images the run started with, naming where those were (`trained_on`, the saved
    config's data) and, when $CIFARKIT_DATA chose the new source, that variable."""
    where = trained_on or "torchvision's CIFAR-10"
    env = os.environ.get("CIFARKIT_DATA")
    hint = (f"; $CIFARKIT_DATA={env} chose it: unset it, or pass --data {where}" if env and cfg.data == env
            else f"; resume with --data {where}")
    if data is None:
        try:
            data = load_cifar10(cfg.data, cfg.data_root, progress=cfg.progress)
        except DataError as e:
            if not saved_fingerprint:
                raise
            raise DataError(f"{e} (the run being resumed was trained on {where}{hint})") from None
    found = fingerprint(data)  # hashes every image (~0.3 s for CIFAR-10): once per run
    if saved_fingerprint and found != saved_fingerprint:
        raise DataError(f"{data.source or 'the data'} is not the dataset this run started on (fingerprint "
                        f"{found}, run: {saved_fingerprint}, trained on {where}){hint}")
    return data, found


def load_finished(cfg: TrainConfig, data: Cifar10 | None, model) -> FitResult:
    """A finished run of `cfg` loaded from its folder (into `model`, an object or factory, when given),
    reported as `fit` reported it, with no training."""
    run_dir = Path(cfg.out)
    ckpt = load_checkpoint(run_dir / LAST)
    saved = config_from_checkpoint(ckpt, run_dir / LAST)
    try:
        final = json.loads((run_dir / RESULTS).read_text())
        if not isinstance(final, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunDirError(f"{run_dir / RESULTS} cannot be read ({type(e).__name__}: truncated or corrupt?); the "
                          f"run's checkpoints are intact: {advice('python', 'overwrite')} to train again, or "
                          f"{advice('python', 'out')}") from None
    history = list(ckpt.get("history", []))
    run_cfg = dataclasses.replace(saved, out=cfg.out, progress=cfg.progress, device=cfg.device,
                                  data=cfg.data if cfg.data is not None else saved.data)
    data, _ = load_run_data(run_cfg, data, saved.data_fingerprint, trained_on=saved.data)  # refuses other images
    device = resolve_device(run_cfg.device)
    if model is not None and not isinstance(model, nn.Module):
        model = build_model(model, run_cfg.dropout)
    model = model_for_config(run_cfg, data.train_images, device, model=model, from_data=False,
                             layout=(ckpt.get("choices") or {}).get("channels_last"))
    load_weights(model, reported_weights(ckpt), run_dir / LAST, run_cfg.model)
    print(f"{run_dir} holds a finished run with these settings: loaded, not trained again "
          f"({advice('python', 'overwrite')} to train it again)")
    print(f"trained on {final.get('hardware')}, {final.get('precision')}, torch {final.get('torch')}; "
          f"{final.get('wall_seconds', 0) / 60:.1f} min")
    for h in history:
        print(epoch_line(h, len(history), "test" if final.get("eval_set") == "test" else "validation"))
    print(final_line(final))
    return FitResult(run_cfg, history, model.eval(), run_dir, final=final, data=data, loaded=True)


# ---------------------------------------------------------------- comparing run folders
class RunsTable(list):
    """One dict per run folder (`compare_runs`); prints as a table, `.plot()` overlays the accuracy curves."""

    COLUMNS = (("run", "<"), ("network", "<"), ("params", ">"), ("RF", ">"), ("rules", "<"), ("epochs", ">"),
               ("single view", ">"), ("TTA", ">"), ("minutes", ">"), ("device", "<"))

    def __str__(self) -> str:
        cells = [[str(r[c]) for c, _ in self.COLUMNS] for r in self]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, (c, _) in enumerate(self.COLUMNS)]
        line = lambda vals: "  ".join(f"{v:{a}{w}}" for v, (_, a), w in zip(vals, self.COLUMNS, widths)).rstrip()  # noqa: E731
        return "\n".join([line([c for c, _ in self.COLUMNS])] + [line(row) for row in cells])

    def plot(self, path: str | Path | None = None):
        """Every run's per-epoch evaluation accuracy in one figure (`plots.plot_compare`)."""
        from .analysis.plots import plot_compare

        return plot_compare({r["run"]: r["history"] for r in self if r["history"]}, path=path,
                            title=f"{len(self)} runs: evaluation accuracy per epoch (single view)")


def compare_runs(*folders: str | Path) -> RunsTable:
    """The run folders side by side: network, parameters, receptive field, course-rule verdicts (P pass,
    F fail, ? undecided, in the order of `check_rules`), epochs, final single-view and TTA test accuracy,
    wall time and device. A folder without config.json is refused in one line; an unfinished run shows
    its epochs so far and "-" for what it has not measured; a network that cannot be rebuilt in this
    process (recorded as "object:...") shows "?" for RF and rules."""
    from .analysis.rules import check_rules, final_receptive_field
    from .base import CifarkitError
    from .runfolder.files import CONFIG, HISTORY_JSON

    table = RunsTable()
    for folder in map(Path, folders):
        try:
            cfg = TrainConfig.from_dict(json.loads((folder / CONFIG).read_text()))
        except (OSError, ValueError, TypeError, CifarkitError) as e:
            raise RunDirError(f"{folder} is not a run folder with a readable {CONFIG} ({type(e).__name__})") from None
        final = _json_or(folder / RESULTS, {})
        history = _json_or(folder / HISTORY_JSON, [])
        rf, rules, params = "?", "?", final.get("parameters")
        try:
            net = build_model(cfg.model, cfg.dropout)
            rf = final_receptive_field(net) or "?"
            checks = check_rules(net, accuracy=final.get("single_view_accuracy"), test_images=final.get("test_total"))
            rules = "".join({True: "P", False: "F", None: "?"}[c.passed] for c in checks)
            params = params or count_parameters(net)
        except CifarkitError:
            pass  # not rebuildable here: the table says "?" rather than guess
        pct = lambda k: f"{final[k]:.2f}%" if final.get(k) is not None else "-"  # noqa: E731
        table.append({"run": folder.name or str(folder), "network": cfg.model.rsplit("/", 1)[-1],
                      "params": f"{params:,}" if params else "?", "RF": rf, "rules": rules,
                      "epochs": f"{len(history)}/{cfg.epochs}", "single view": pct("single_view_accuracy"),
                      "TTA": pct("tta_accuracy"),
                      "minutes": f"{final['wall_seconds'] / 60:.1f}" if "wall_seconds" in final else "-",
                      "device": final.get("hardware", "-"), "history": history, "final": final})
    return table


def _json_or(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default
