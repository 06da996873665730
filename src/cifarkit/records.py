"""The run's records, checked against each other and against what the notebook shows (for the
hand-in check, `handin.py`): results.json and history.json read in one line or refused in one,
their counts and percentages, the final results and every epoch's test line in the notebook, and no
path of a developer's machine in the outputs or the run's config. Also the `Check` line every
hand-in check is made of."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .base import CifarkitError, plural

OUT_LINE = re.compile(r"^\s+out\s+= '(.+)'\s*$", re.M)  # TrainConfig's printout, as fit prints it
# a per-epoch test line: the seed-style line (progress on) or the one-line log (`report.epoch_line`)
# A count and the percentage printed with it: "8741/10000 = 87.41%", "8741/10000 (87.41%)".
_COUNT = r"(\d+)/(\d+)(?:(?: = | \()(\d+(?:\.\d+)?)%)?"
EPOCH_TEST = re.compile(
    r"(?:(?:Test|Validation) set: Average loss: [\d.]+, Accuracy: |\| (?:test|validation) loss"
    r" [\d.]+ acc )" + _COUNT
)
# the final results as cifarkit prints them (report.py, the notebook's results cell, findings)
HEADLINE = re.compile(
    r"(?:final test acc\.\s+single view: |Final test, [^:\n]*: Accuracy: |final test accuracy:"
    r" single view |TTA \(\d+ views\):? )" + _COUNT
)
# findings.py: "87.41% single view (8741/10000 test images ..., 88.60% with flip-translate TTA"
FINDINGS = re.compile(r"(\d+\.\d+)% single view \((\d+)/(\d+) test images")
FINDINGS_TTA = re.compile(r"(\d+\.\d+)% with \S+ TTA")
# torchsummary's table, and summary.py's count when torchsummary's differs (a shared layer)
SUMMARY_TOTAL = re.compile(
    r"^Total params: ([\d,]+)$|the network has ([\d,]+) parameters, each", re.M
)
RESUMED = re.compile(r"resuming \S.* after epoch (\d+)/")
# a developer's or CI machine; a student's own /home, /Users or C:\ paths are theirs to keep
DEV_PATH = re.compile(r"(?<![\w.~/-])(/tmp/|/work/|/root/)")


@dataclass
class Check:
    ok: bool | None  # None: cifarkit cannot check this; a person must
    what: str
    detail: str
    decides: bool = False  # left open (None), it leaves the verdict open too

    def __str__(self) -> str:
        mark = {True: "[ OK ]", False: "[FAIL]", None: "[ ?? ]"}[self.ok]
        return f"{mark} {self.what}: {self.detail}"


def cell_text(cell: dict) -> str:
    parts = []
    for o in cell.get("outputs") or []:
        if isinstance(o, dict):
            parts.append("".join(o.get("text", "")))
            parts.append("".join(o.get("data", {}).get("text/plain", "")))
            parts.append("".join(o.get("data", {}).get("text/markdown", "")))
    return "".join(parts)


def cell_name(cells: list[dict], i: int) -> str:
    """A cell as Jupyter shows it: "In [12]", or "code cell 5 (not run)"."""
    n = cells[i].get("execution_count")
    if n is not None:
        return f"In [{n}]"
    k = sum(c.get("cell_type") == "code" for c in cells[: i + 1])
    return f"code cell {k} (not run)"


def find_run(cells: list[dict], notebook_dir: Path, run: str | Path | None) -> Path | None:
    """--run, else the last run folder a fit output in the notebook names (relative to the
    notebook's folder)."""
    if run is not None:
        return Path(run)
    outs = [m.group(1) for c in cells for m in OUT_LINE.finditer(cell_text(c))]
    if not outs:
        return None
    path = Path(outs[-1])
    return path if path.is_absolute() else notebook_dir / path


def read_records(run_dir: Path) -> tuple[dict, list]:
    """(results.json, history.json) of a finished run; CifarkitError, one line, when they are
    missing, not JSON of the right shape, or written by an older cifarkit."""

    def load(name: str, kind: type):
        try:
            value = json.loads((run_dir / name).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CifarkitError(f"{run_dir / name} missing or unreadable ({type(e).__name__})")
        if not isinstance(value, kind):
            raise CifarkitError(
                f"{run_dir / name} holds a JSON {type(value).__name__}, not the"
                f" {kind.__name__} a finished run writes"
            )
        return value

    results, history = load("results.json", dict), load("history.json", list)
    if any(k.startswith("final_test_") for k in results):
        raise CifarkitError(
            f"{run_dir / 'results.json'} was written by an older cifarkit (final_test_* keys):"
            " evaluate the run again (python -m cifarkit evaluate) or train it again"
        )
    need = {"single_view_correct": int, "test_total": int, "single_view_accuracy": (int, float)}
    bad = [k for k, t in need.items() if not isinstance(results.get(k), t)]
    if bad or not all(isinstance(h, dict) and "eval_correct" in h for h in history):
        raise CifarkitError(
            f"{run_dir} holds no finished run's records"
            + (f" (results.json lacks {', '.join(bad)})" if bad else " (history.json rows)")
        )
    return results, history


def check_records(results: dict, history: list) -> Check:
    """The run's own records agree with each other."""
    total, odd = results["test_total"], []
    for view in ("single_view", "tta"):
        correct, acc = results.get(f"{view}_correct"), results.get(f"{view}_accuracy")
        if correct is None:
            continue
        if not isinstance(acc, (int, float)) or abs(acc - 100 * correct / total) > 0.006:
            odd.append(
                f"results.json says {view.replace('_', ' ')} {acc}% but {correct}/{total} is"
                f" {100 * correct / total:.2f}%"
            )
    if results.get("epochs", len(history)) != len(history):
        odd.append(
            f"results.json says {results['epochs']} epochs, history.json holds {len(history)}"
        )
    last = history[-1] if history else {}
    if (
        results.get("eval_set", "test") == "test"
        and last.get("eval_total", total) == total
        and last.get("eval_correct") != results["single_view_correct"]
    ):
        odd.append(
            f"the last epoch in history.json has {last.get('eval_correct')}/{total} right,"
            f" results.json {results['single_view_correct']}/{total}"
        )
    if odd:
        return Check(False, "run records agree", "; ".join(odd))
    return Check(True, "run records agree", "results.json and history.json tell the same numbers")


def _shown_counts(cells: list[dict]) -> list[tuple[str, int, int, float | None]]:
    """Every final result cifarkit printed in the notebook: (cell, count, of, percent or None)."""
    shown = []
    for i, c in enumerate(cells):
        text = cell_text(c)
        for m in HEADLINE.finditer(text):
            p = m.group(3)
            shown.append((cell_name(cells, i), int(m.group(1)), int(m.group(2)), p and float(p)))
        for m in FINDINGS.finditer(text):
            shown.append((cell_name(cells, i), int(m.group(2)), int(m.group(3)), float(m.group(1))))
    return shown


def _percent_off(n: int, of: int, percent: float | None) -> bool:
    """A percentage printed beside a count that is not that count's (to the 2 decimals shown)."""
    return percent is not None and of > 0 and abs(percent - 100 * n / of) > 0.006


def check_shown(cells: list[dict], results: dict, history: list) -> list[Check]:
    """What the notebook shows is what the run recorded: the final results (each count, and the
    percentage printed with it), every epoch's line."""
    total = results["test_total"]
    known = {results["single_view_correct"], results.get("tta_correct")}
    shown = [row for row in _shown_counts(cells) if row[2] == total]
    stray = [f"{name} shows {n}/{total}" for name, n, _, _ in shown if n not in known]
    stray += [
        f"{name} shows {n}/{of} as {p:.2f}% (that count is {100 * n / of:.2f}%)"
        for name, n, of, p in shown
        if n in known and _percent_off(n, of, p)
    ]
    tta = results.get("tta_accuracy")
    stray += [
        f"{cell_name(cells, i)} shows {m.group(1)}% TTA, results.json {tta:.2f}%"
        for i, c in enumerate(cells)
        for m in FINDINGS_TTA.finditer(cell_text(c))
        if isinstance(tta, (int, float)) and abs(float(m.group(1)) - tta) > 0.006
    ]
    stray = list(dict.fromkeys(stray))  # a rich output holds its text twice (Markdown and plain)
    have = {n for _, n, _, _ in shown}
    want = f"{results['single_view_correct']}/{total} single view" + (
        f", {results['tta_correct']}/{total} TTA" if results.get("tta_correct") is not None else ""
    )
    if stray or results["single_view_correct"] not in have:
        detail = "; ".join(stray) or "the notebook shows no final test result of this run"
        final = Check(False, "final numbers", f"{detail}; the run's records: {want}")
    else:
        final = Check(True, "final numbers", f"{want}, shown in the notebook as in results.json")
    fit_cells = [c for c in cells if OUT_LINE.search(cell_text(c))]
    text = cell_text(fit_cells[-1]) if fit_cells else ""
    found = list(EPOCH_TEST.finditer(text))
    lines = [int(m.group(1)) for m in found]
    resumed = RESUMED.search(text)
    start = int(resumed.group(1)) if resumed else 0
    expected = [h["eval_correct"] for h in history][start:]
    got = lines[: len(expected)]
    off = [
        k
        for k, m in enumerate(found[: len(expected)])
        if _percent_off(int(m.group(1)), int(m.group(2)), m.group(3) and float(m.group(3)))
    ]
    if got == expected and not off:
        per_epoch = Check(
            True,
            "per-epoch test lines",
            f"{plural(len(history), 'epoch')}, as history.json holds them",
        )
    elif got == expected:
        m = found[off[0]]
        per_epoch = Check(
            False,
            "per-epoch test lines",
            f"epoch {start + off[0] + 1}: the fit output shows {m.group(1)}/{m.group(2)} as"
            f" {m.group(3)}% (that count is {100 * int(m.group(1)) / int(m.group(2)):.2f}%)",
        )
    else:
        k = next((k for k in range(len(expected)) if k >= len(got) or got[k] != expected[k]), 0)
        seen = f"{got[k]} right" if k < len(got) else "no test line"
        per_epoch = Check(
            False,
            "per-epoch test lines",
            f"epoch {start + k + 1}: the fit output shows {seen}, history.json"
            f" {expected[k]}/{history[start + k].get('eval_total', total)}",
        )
    return [final, per_epoch, *_check_summaries(cells, results)]


def _check_summaries(cells: list[dict], results: dict) -> list[Check]:
    """The network's summary table: when the notebook shows any, one of them is of the trained
    network (its parameter count is results.json's); none when it shows none."""
    want = results.get("parameters")
    totals = [
        (cell_name(cells, i), int((m.group(1) or m.group(2)).replace(",", "")))
        for i, c in enumerate(cells)
        for m in SUMMARY_TOTAL.finditer(cell_text(c))
    ]
    if not totals or not isinstance(want, int):
        return []
    mine = [name for name, n in totals if n == want]
    if mine:
        return [Check(True, "network summary", f"{mine[0]}: {want:,} parameters, as trained")]
    shown = ", ".join(dict.fromkeys(f"{name}: {n:,}" for name, n in totals[:3]))
    return [
        Check(
            False,
            "network summary",
            f"the summary tables show other parameter counts ({shown}) than the trained network's"
            f" {want:,} (results.json)",
        )
    ]


def check_leaks(nb: dict, run_dir: Path | None, results: dict | None) -> list[Check]:
    cells = nb.get("cells", [])
    texts = [(cell_name(cells, i), cell_text(c)) for i, c in enumerate(cells)]
    texts.append(("metadata", json.dumps(nb.get("metadata", {}))))
    if run_dir is not None and (run_dir / "config.json").is_file():
        texts.append(("config.json", (run_dir / "config.json").read_text(errors="replace")))
    found = [(where, m.group(0)) for where, t in texts for m in [DEV_PATH.search(t)] if m]
    checks = [
        Check(
            not found,
            "nothing of another machine",
            (
                "no path of a developer's or CI machine in the outputs, metadata or config.json"
                if not found
                else "paths of another machine in "
                + ", ".join(f"{w} ({p}...)" for w, p in found[:4])
                + ": keep the run folder and the data beside the notebook (relative paths, e.g."
                " out='runs/mine') and run it again"
            ),
        )
    ]
    accel = nb.get("metadata", {}).get("accelerator")
    if accel and results is not None:
        kind = "GPU" if str(results.get("hardware", "")).startswith("GPU") else "CPU"
        ok = str(accel).upper() == kind or (kind == "CPU" and str(accel).upper() == "NONE")
        checks.append(
            Check(ok, "metadata", f"accelerator {accel!r}, the run used {results.get('hardware')}")
        )
    return checks
