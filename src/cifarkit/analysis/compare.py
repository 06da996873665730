"""Comparing run folders: `compare_runs(*folders)` reads each one's config, history and results (and
rebuilds its network for the receptive field and the course rules) into one table and one figure."""

from __future__ import annotations

import json
from pathlib import Path

from ..base import CifarkitError
from ..config import TrainConfig
from ..models import build_model, count_parameters
from ..runfolder.files import CONFIG, HISTORY_JSON, RESULTS, rebase_paths
from ..runfolder.lock import RunDirError
from .rules import check_rules, final_receptive_field


class RunsTable(list):
    """One dict per run folder (`compare_runs`); prints as a table, `.plot()` overlays the accuracy
    curves."""

    COLUMNS = (
        ("run", "<"),
        ("network", "<"),
        ("params", ">"),
        ("RF", ">"),
        ("rules", "<"),
        ("epochs", ">"),
        ("single view", ">"),
        ("TTA", ">"),
        ("minutes", ">"),
        ("device", "<"),
    )

    def __str__(self) -> str:
        cells = [[str(r[c]) for c, _ in self.COLUMNS] for r in self]
        widths = [
            max([len(c)] + [len(row[i]) for row in cells]) for i, (c, _) in enumerate(self.COLUMNS)
        ]
        line = lambda vals: "  ".join(
            f"{v:{a}{w}}" for v, (_, a), w in zip(vals, self.COLUMNS, widths)
        ).rstrip()  # noqa: E731
        return "\n".join([line([c for c, _ in self.COLUMNS])] + [line(row) for row in cells])

    def plot(self, path: str | Path | None = None):
        """Every run's per-epoch evaluation accuracy in one figure (`plots.plot_compare`)."""
        from .plots import plot_compare

        return plot_compare(
            {r["run"]: r["history"] for r in self if r["history"]},
            path=path,
            title=f"{len(self)} runs: evaluation accuracy per epoch (single view)",
        )


def compare_runs(*folders: str | Path) -> RunsTable:
    """The run folders side by side: network, parameters, receptive field, course-rule verdicts (P
    pass, F fail, ? undecided, in the order of `check_rules`), epochs, final single-view and TTA
    test accuracy, wall time and device. A folder without config.json is refused in one line; an
    unfinished run shows its epochs so far and "-" for what it has not measured; a network that
    cannot be rebuilt in this process (recorded as "object:...") shows "?" for RF and rules."""
    table = RunsTable()
    for folder in map(Path, folders):
        try:
            cfg = TrainConfig.from_dict(
                rebase_paths(json.loads((folder / CONFIG).read_text()), folder)
            )
        except (OSError, ValueError, TypeError, CifarkitError) as e:
            raise RunDirError(
                f"{folder} is not a run folder with a readable {CONFIG} ({type(e).__name__})"
            ) from None
        final = _json_or(folder / RESULTS, {})
        history = _json_or(folder / HISTORY_JSON, [])
        rf, rules, params = "?", "?", final.get("parameters")
        try:
            net = build_model(cfg.model, cfg.dropout)
            rf = final_receptive_field(net) or "?"
            checks = check_rules(
                net, accuracy=final.get("single_view_accuracy"), test_images=final.get("test_total")
            )
            rules = "".join({True: "P", False: "F", None: "?"}[c.passed] for c in checks)
            params = params or count_parameters(net)
        except CifarkitError:
            pass  # not rebuildable here: the table says "?" rather than guess
        pct = lambda k: f"{final[k]:.2f}%" if final.get(k) is not None else "-"  # noqa: E731
        table.append(
            {
                "run": folder.name or str(folder),
                "network": cfg.model.rsplit("/", 1)[-1],
                "params": f"{params:,}" if params else "?",
                "RF": rf,
                "rules": rules,
                "epochs": f"{len(history)}/{cfg.epochs}",
                "single view": pct("single_view_accuracy"),
                "TTA": pct("tta_accuracy"),
                "minutes": f"{final['wall_seconds'] / 60:.1f}" if "wall_seconds" in final else "-",
                "device": final.get("hardware", "-"),
                "history": history,
                "final": final,
            }
        )
    return table


def _json_or(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default
