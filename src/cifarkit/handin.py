"""The hand-in check: what a grader checks in an executed notebook and its run folder, one line
each.

    python -m cifarkit check-notebook Assignment7.ipynb [--run RUN_FOLDER]

  - executed top to bottom in one go (execution counts rising in cell order), without an error
    output;
  - every cell that draws a figure (plot_*, show_images, gradcam_misclassified, .plot()) holds it;
  - the six course rules, as the notebook's last `check_rules` output states them, with the accuracy
    rule judged on the run's own single-view test accuracy (results.json, on the full 10,000 test
    images);
  - the run folder (the `out` the notebook's `fit` printed, or --run) present, and its numbers
    (final single-view and TTA test results, every epoch's test line) equal to the ones the notebook
    shows;
  - nothing of another machine: no absolute path of a developer's machine (/tmp, /home, /root,
    /work, /Users, C:\\) in any output, the metadata or the run's config, and metadata true of the
    run.

It reads the notebook as JSON (nothing is executed, no torch needed), so it works on any notebook
built from this one (a renamed network, extra cells). What it cannot check is printed as "[ ?? ]"
with the reason; the exit status is 0 only when every check it could make holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

PLOT_CALL = re.compile(r"\b(plot_\w+|show_images|gradcam_misclassified)\s*\(|\.plot\(")
RULE_LINE = re.compile(r"^\[(PASS|FAIL| \?\? )\] (\S.*?)\s{2,}(\S.*)$")
OUT_LINE = re.compile(r"^\s+out\s+= '(.+)'\s*$", re.M)  # TrainConfig's printout, as fit prints it
EPOCH_TEST = re.compile(r"(?:Test|Validation) set: Average loss: [\d.]+, Accuracy: (\d+)/(\d+)")
FOREIGN_PATH = re.compile(r"(?<![\w.~/-])(/tmp/|/home/|/root/|/work/|/Users/|[A-Z]:\\\\)")


@dataclass
class Check:
    ok: bool | None  # None: cifarkit cannot check this; a person must
    what: str
    detail: str

    def __str__(self) -> str:
        mark = {True: "[ OK ]", False: "[FAIL]", None: "[ ?? ]"}[self.ok]
        return f"{mark} {self.what}: {self.detail}"


class HandinReport(list):
    """The checks in order; prints one line each, then the verdict. `ok`: every check that could be
    made holds."""

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self)

    def __str__(self) -> str:
        failed = sum(c.ok is False for c in self)
        verdict = (
            "ready to hand in: every check cifarkit can make holds"
            if self.ok
            else f"not ready: {failed} check{'s' * (failed != 1)} failed"
        )
        return "\n".join([*map(str, self), verdict])


def _text(cell: dict) -> str:
    parts = []
    for o in cell.get("outputs", []):
        parts.append("".join(o.get("text", "")))
        parts.append("".join(o.get("data", {}).get("text/plain", "")))
        parts.append("".join(o.get("data", {}).get("text/markdown", "")))
    return "".join(parts)


def _code(cell: dict) -> str:
    """The cell's source without comment lines (a plotting call in a comment draws nothing)."""
    return "\n".join(
        line
        for line in "".join(cell.get("source", "")).splitlines()
        if not line.lstrip().startswith(("#", "%", "!"))
    )


def _images(cell: dict) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def check_executed(cells: list[dict]) -> Check:
    code = [
        (i, c) for i, c in enumerate(cells) if c.get("cell_type") == "code" and _code(c).strip()
    ]
    if not code:
        return Check(False, "executed", "the notebook has no code cells")
    missing = [i for i, c in code if c.get("execution_count") is None]
    errors = [
        i for i, c in code if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    counts = [c["execution_count"] for _, c in code if c.get("execution_count") is not None]
    if missing or errors or counts != sorted(counts) or len(set(counts)) != len(counts):
        what = []
        if missing:
            what.append(f"cells {missing} not executed")
        if errors:
            what.append(f"cells {errors} hold an error")
        if counts != sorted(counts) or len(set(counts)) != len(counts):
            what.append(
                f"execution counts out of order ({counts[:12]}...): run Runtime > Run all once"
            )
        return Check(False, "executed top to bottom", "; ".join(what))
    return Check(
        True,
        "executed top to bottom",
        f"{len(code)} code cells run in order ({counts[0]}..{counts[-1]}), no error output",
    )


def check_figures(cells: list[dict]) -> Check:
    plotting = [
        (i, len(PLOT_CALL.findall(_code(c))), _images(c))
        for i, c in enumerate(cells)
        if c.get("cell_type") == "code" and PLOT_CALL.search(_code(c))
    ]
    short = [f"cell {i}: {got} of {want}" for i, want, got in plotting if got < want]
    if short:
        return Check(
            False, "figures inline", "plotting cells without their figure: " + ", ".join(short)
        )
    return Check(
        True,
        "figures inline",
        f"{len(plotting)} plotting cells, {sum(n for *_, n in plotting)} figures",
    )


def course_rules(cells: list[dict]) -> list[tuple[str, str, str]]:
    """The last block of course-rule lines the notebook printed: (verdict, rule, evidence) each."""
    blocks = []
    for c in cells:
        rules = [RULE_LINE.match(line) for line in _text(c).splitlines()]
        rules = [
            (m.group(1).strip() or "??", m.group(2).strip(), m.group(3).strip()) for m in rules if m
        ]
        if len(rules) >= 6:
            blocks.append(rules[-6:])
    return blocks[-1] if blocks else []


def check_rules(cells: list[dict], results: dict | None) -> list[Check]:
    rules = course_rules(cells)
    if not rules:
        return [
            Check(
                False,
                "course rules",
                "the notebook prints no check_rules output (six [PASS] / [FAIL] lines)",
            )
        ]
    out = []
    for verdict, rule, evidence in rules:
        if "accuracy" in rule:
            out.append(_accuracy_rule(rule, results))
        else:
            out.append(
                Check(
                    {"PASS": True, "FAIL": False}.get(verdict),
                    rule,
                    evidence
                    + " (as the notebook's check_rules prints it, from the network's forward pass)",
                )
            )
    return out


def _accuracy_rule(rule: str, results: dict | None) -> Check:
    if results is None:
        return Check(None, rule, "no results.json in the run folder to read the accuracy from")
    acc, total = results.get("single_view_accuracy"), results.get("test_total")
    if acc is None:
        return Check(
            False, rule, "results.json holds no single-view accuracy (the run did not finish)"
        )
    if total != 10000:
        return Check(None, rule, f"measured on {total} test images, not all 10,000: undecided")
    return Check(
        acc >= 80.0,
        rule,
        f"{acc:.2f}% single view ({results['single_view_correct']}/{total}, the run's "
        "results.json)",
    )


def find_run(cells: list[dict], notebook_dir: Path, run: str | Path | None) -> Path | None:
    if run is not None:
        return Path(run)
    outs = [m.group(1) for c in cells for m in OUT_LINE.finditer(_text(c))]
    if not outs:
        return None
    path = Path(outs[-1])
    return path if path.is_absolute() else notebook_dir / path


def check_run(cells: list[dict], run_dir: Path | None) -> tuple[list[Check], dict | None]:
    if run_dir is None:
        return [
            Check(
                False,
                "run folder",
                "the notebook shows no fit() output naming its run folder (out = ...); "
                "pass --run FOLDER",
            )
        ], None
    try:
        results = json.loads((run_dir / "results.json").read_text())
        history = json.loads((run_dir / "history.json").read_text())
    except (OSError, ValueError) as e:
        return [
            Check(
                False,
                "run folder",
                f"{run_dir}: results.json / history.json missing or unreadable "
                f"({type(e).__name__})",
            )
        ], None
    shown = "\n".join(_text(c) for c in cells)
    checks = [Check(True, "run folder", f"{run_dir} holds a finished run of {len(history)} epochs")]
    want = [f"{results['single_view_correct']}/{results['test_total']}"]
    if results.get("tta_correct") is not None:
        want.append(f"{results['tta_correct']}/{results['test_total']}")
    absent = [w for w in want if w not in shown]
    checks.append(
        Check(
            not absent,
            "final numbers",
            "single view "
            + " and TTA ".join(want)
            + (
                " shown in the notebook, as in results.json"
                if not absent
                else f": {absent} not in the notebook's outputs"
            ),
        )
    )
    fit_cells = [c for c in cells if OUT_LINE.search(_text(c))]
    epochs = (
        [int(m.group(1)) for m in EPOCH_TEST.finditer(_text(fit_cells[-1]))] if fit_cells else []
    )
    expected = [h["eval_correct"] for h in history]
    checks.append(
        Check(
            epochs[: len(expected)] == expected,
            "per-epoch test lines",
            f"{len(expected)} epochs in history.json, the notebook's fit output shows "
            + (
                "the same"
                if epochs[: len(expected)] == expected
                else f"{epochs[:5]}... instead of {expected[:5]}..."
            ),
        )
    )
    return checks, results


def check_leaks(nb: dict, run_dir: Path | None, results: dict | None) -> list[Check]:
    texts = [(f"cell {i}", _text(c)) for i, c in enumerate(nb.get("cells", []))]
    texts.append(("metadata", json.dumps(nb.get("metadata", {}))))
    if run_dir is not None and (run_dir / "config.json").is_file():
        texts.append(("config.json", (run_dir / "config.json").read_text()))
    found = [(where, m.group(0)) for where, t in texts for m in [FOREIGN_PATH.search(t)] if m]
    checks = [
        Check(
            not found,
            "nothing of another machine",
            (
                "no absolute path of a developer's machine in the outputs, metadata or config.json"
                if not found
                else "absolute paths in " + ", ".join(f"{w} ({p}...)" for w, p in found[:4])
            ),
        )
    ]
    accel = nb.get("metadata", {}).get("accelerator")
    if accel and results is not None:
        # what the run used
        kind = "GPU" if str(results.get("hardware", "")).startswith("GPU") else "CPU"
        ok = accel.upper() == kind or (kind == "CPU" and accel.upper() == "NONE")
        checks.append(
            Check(ok, "metadata", f"accelerator {accel!r}, the run used {results.get('hardware')}")
        )
    return checks


def check_notebook(notebook: str | Path | dict, run: str | Path | None = None) -> HandinReport:
    """The hand-in report of an executed notebook (a path, or its JSON as a dict) and its run
    folder."""
    if isinstance(notebook, dict):
        nb, where = notebook, Path.cwd()
    else:
        try:
            nb, where = json.loads(Path(notebook).read_text()), Path(notebook).resolve().parent
        except (OSError, ValueError) as e:
            from .base import CifarkitError

            raise CifarkitError(
                f"cannot read the notebook {notebook}: {type(e).__name__}"
            ) from None
    cells = nb.get("cells", [])
    run_dir = find_run(cells, where, run)
    run_checks, results = check_run(cells, run_dir)
    report = HandinReport(
        [
            check_executed(cells),
            check_figures(cells),
            *check_rules(cells, results),
            *run_checks,
            *check_leaks(nb, run_dir, results),
        ]
    )
    report.append(
        Check(
            None,
            "the run is this code's",
            "cifarkit cannot rebuild a notebook's network without "
            'executing it; fit(resume="auto") refuses a run made by other code when the cell runs',
        )
    )
    report.append(Check(None, "your own words", "a person reads the conclusion you wrote"))
    return report


def check_this_notebook(run: str | Path | None = None) -> HandinReport | str:
    """The hand-in check from the notebook's last cell. On Colab the notebook's current outputs are
    read from the browser (they are not on disk yet), so the whole check runs. Elsewhere a running
    notebook's file still holds the previous run: the check is left to the command line once the
    notebook is saved.
    """
    try:
        from google.colab import _message  # only on Colab

        nb = _message.blocking_request("get_ipynb", timeout_sec=60)["ipynb"]
    except Exception:  # noqa: BLE001 - not Colab, or the frontend did not answer: say how to check instead
        nb = None
    if nb:
        return check_notebook(nb, run)
    return (
        "the hand-in check reads the executed notebook, and outside Colab this kernel cannot see it"
        " before it is saved: save it (File > Save), then run  python -m cifarkit check-notebook"
        " Assignment7.ipynb" + (f" --run {run}" if run else "")
    )
