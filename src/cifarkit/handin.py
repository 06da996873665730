"""The hand-in check: what a grader checks in an executed notebook and its run folder, one line
each, cells named as Jupyter shows them (In [N]).

    python -m cifarkit check-notebook Assignment7.ipynb [--run RUN_FOLDER] [--verify]

  - executed top to bottom in one go (execution counts rising in cell order), without an error;
  - every cell that draws a figure (plot_*, show_images, gradcam_misclassified, .plot()) holds it;
  - the course rules of the network that was trained: the `check_rules` block whose parameter count
    is the run's (results.json), not whichever block was printed last; the accuracy rule judged on
    the run's own single-view accuracy over all 10,000 test images (fewer: undecided);
  - the run folder (the `out` the notebook's fit printed, or --run) and its records agreeing with
    each other (results.json's counts and percentages, history.json's last epoch) and with what the
    notebook shows (the final results, every epoch's test line);
  - your own words: the authors line and the conclusion are not the template's;
  - nothing of a developer's or CI machine (/tmp, /work, /root paths) in the outputs, metadata or
    the run's config (paths of your own machine are fine), and metadata true of the run.

It reads the notebook as JSON (nothing is executed, no torch needed), so it works on any notebook
built from this one. What it cannot check is printed as "[ ?? ]" with the reason. The verdict is
"ready" only when every check holds and nothing that decides it is left open (a missing run folder,
an undecided rule); exit status 0 ready, 1 not ready, 3 cannot tell. `--verify` also re-evaluates
the run's checkpoint on the test set (`verify.py`), for a results.json that might have been edited.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .base import CifarkitError, plural
from .records import (
    Check,
    cell_name,
    cell_text,
    check_leaks,
    check_records,
    check_shown,
    find_run,
    read_records,
)

PLOT_CALL = re.compile(r"\b(plot_\w+|show_images|gradcam_misclassified)\s*\(|\.plot\(")
RULE_LINE = re.compile(r"^\[(PASS|FAIL| \?\? )\] (\S.*?)\s{2,}(\S.*)$")
TEMPLATE = {"authors line": "*your name(s) here.*", "conclusion": "*Write here what you changed"}
EXIT = {"ready": 0, "not ready": 1, "cannot tell": 3}


class HandinReport(list):
    """The checks in order; prints one line each, then the verdict."""

    @property
    def state(self) -> str:
        """ "ready", "not ready" (a check failed) or "cannot tell" (one that decides is open)."""
        if any(c.ok is False for c in self):
            return "not ready"
        return "cannot tell" if any(c.ok is None and c.decides for c in self) else "ready"

    @property
    def ok(self) -> bool:
        return self.state == "ready"

    def __str__(self) -> str:
        failed = sum(c.ok is False for c in self)
        verdict = {
            "ready": "ready to hand in: every check cifarkit can make holds",
            "not ready": f"not ready: {plural(failed, 'check')} failed",
            "cannot tell": "not ready yet: cannot tell, "
            + "; ".join(c.what for c in self if c.ok is None and c.decides)
            + " left open (the [ ?? ] lines say why)",
        }[self.state]
        return "\n".join([*map(str, self), verdict])


def _code(cell: dict) -> str:
    """The cell's source without comment lines (a plotting call in a comment draws nothing)."""
    return "\n".join(
        line
        for line in "".join(cell.get("source", "")).splitlines()
        if not line.lstrip().startswith(("#", "%", "!"))
    )


def _images(cell: dict) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs") or [])


def check_executed(cells: list[dict]) -> Check:
    code = [
        (i, c) for i, c in enumerate(cells) if c.get("cell_type") == "code" and _code(c).strip()
    ]
    if not code:
        return Check(False, "executed", "the notebook has no code cells")
    missing = [cell_name(cells, i) for i, c in code if c.get("execution_count") is None]
    errors = [
        cell_name(cells, i)
        for i, c in code
        if any(o.get("output_type") == "error" for o in c.get("outputs") or [])
    ]
    counts = [c["execution_count"] for _, c in code if c.get("execution_count") is not None]
    if missing or errors or counts != sorted(counts) or len(set(counts)) != len(counts):
        what = []
        if missing:
            what.append(f"{', '.join(missing)} not executed")
        if errors:
            what.append(f"{', '.join(errors)} hold an error")
        if counts != sorted(counts) or len(set(counts)) != len(counts):
            what.append(
                f"execution counts out of order ({counts[:12]}...): run Runtime > Run all once"
            )
        return Check(False, "executed top to bottom", "; ".join(what))
    return Check(
        True,
        "executed top to bottom",
        f"{len(code)} code cells run in order (In [{counts[0]}]..In [{counts[-1]}]), no error",
    )


def check_figures(cells: list[dict]) -> Check:
    plotting = [
        (cell_name(cells, i), len(PLOT_CALL.findall(_code(c))), _images(c))
        for i, c in enumerate(cells)
        if c.get("cell_type") == "code" and PLOT_CALL.search(_code(c))
    ]
    short = [f"{name}: {got} of {want}" for name, want, got in plotting if got < want]
    if short:
        return Check(
            False, "figures inline", "plotting cells without their figure: " + ", ".join(short)
        )
    return Check(
        True,
        "figures inline",
        f"{len(plotting)} plotting cells, {sum(n for *_, n in plotting)} figures",
    )


def rule_blocks(cells: list[dict]) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Every block of course-rule lines the notebook printed: (cell name, [(verdict, rule,
    evidence)])."""
    blocks = []
    for i, c in enumerate(cells):
        rules = [RULE_LINE.match(line) for line in cell_text(c).splitlines()]
        rules = [
            (m.group(1).strip() or "??", m.group(2).strip(), m.group(3).strip()) for m in rules if m
        ]
        for start in range(0, len(rules) - 5, 6):
            blocks.append((cell_name(cells, i), rules[start : start + 6]))
    return blocks


def _parameters(rules) -> int | None:
    for _, rule, evidence in rules:
        if rule.startswith("parameters"):
            m = re.match(r"([\d,]+)", evidence)
            return int(m.group(1).replace(",", "")) if m else None
    return None


def _judged(blocks: list) -> tuple[str, list[tuple[str, str, str]]]:
    """Of the blocks of the trained network, the one that judges it: the last with an accuracy."""
    judged = [b for b in blocks if any("accuracy" in r and "%" in e for _, r, e in b[1])]
    return (judged or blocks)[-1]


def judged_block(cells: list[dict], results: dict) -> tuple[str, list] | None:
    """The rule block `check_rules` judges: the last of the trained network's (results.json's
    parameter count) with an accuracy; None when the notebook prints none of that network."""
    mine = [b for b in rule_blocks(cells) if _parameters(b[1]) == results.get("parameters")]
    return _judged(mine) if mine else None


def check_rules(cells: list[dict], results: dict | None) -> list[Check]:
    """The course rules of the trained network: the block with the run's parameter count."""
    blocks = rule_blocks(cells)
    if not blocks:
        return [
            Check(
                False,
                "course rules",
                "the notebook prints no check_rules output (six [PASS] / [FAIL] lines)",
            )
        ]
    want = (results or {}).get("parameters")
    mine = [b for b in blocks if want is None or _parameters(b[1]) == want]
    if not mine:
        seen = sorted({f"{p:,}" for p in map(_parameters, (b[1] for b in blocks)) if p})
        return [
            Check(
                False,
                "course rules",
                f"no check_rules output of the trained network ({want:,} parameters in"
                f" results.json); the notebook shows rules of networks of {', '.join(seen)}"
                " parameters: print ck.check_rules(result.model, ...) after training",
            )
        ]
    others = sorted({p for p in map(_parameters, (b[1] for b in blocks)) if p and p != want})
    out = []
    if want is not None and others and ":" not in str(results.get("model", ":")):
        # a built-in network was trained while the notebook checks networks of its own
        out.append(
            Check(
                None,
                "network trained",
                f"results.json: {results['model']} ({want:,} parameters) was trained, while the"
                f" notebook also checks networks of {', '.join(f'{p:,}' for p in others)}"
                " parameters: if yours is one, set NETWORK to it and Run all again",
                decides=True,
            )
        )
    name, rules = _judged(mine)
    which = (
        f"{name}, the trained network's {want:,} parameters"
        if want is not None
        else f"{name}; which network was trained needs the run folder"
    )
    for verdict, rule, evidence in rules:
        if "accuracy" in rule:
            out.append(_accuracy_rule(rule, evidence, results))
        else:
            ok = {"PASS": True, "FAIL": False}.get(verdict)
            out.append(Check(ok, rule, f"{evidence} ({which})", decides=True))
    return out


def _accuracy_rule(rule: str, printed: str, results: dict | None) -> Check:
    if results is None:
        return Check(None, rule, "needs the run folder's results.json", decides=True)
    acc, total, correct = (
        results.get(k) for k in ("single_view_accuracy", "test_total", "single_view_correct")
    )
    if total != 10000:
        return Check(
            None,
            rule,
            f"undecided: measured on {total} of the 10,000 test images (a smoke or short run):"
            " train with the full test set",
            decides=True,
        )
    m = re.match(r"([\d.]+)%", printed)
    if m and abs(float(m.group(1)) - acc) > 0.005:
        return Check(
            False,
            rule,
            f"the notebook prints {m.group(1)}% for the trained network, results.json {acc:.2f}%",
        )
    return Check(
        acc >= 80.0,
        rule,
        f"{acc:.2f}% single view ({correct}/{total}, the run's results.json)",
    )


def check_own_words(cells: list[dict]) -> Check:
    text = "\n".join(
        "".join(c.get("source", "")) for c in cells if c.get("cell_type") == "markdown"
    )
    left = [what for what, marker in TEMPLATE.items() if marker in text]
    if left:
        return Check(
            False,
            "your own words",
            f"the {' and the '.join(left)} still hold{'s' * (len(left) == 1)} the template's text:"
            " write your own",
        )
    return Check(None, "your own words", "a person reads the conclusion you wrote")


def read_notebook(notebook: str | Path | dict) -> dict:
    """The notebook's JSON (nbformat 4; a version 3 notebook is converted by nbformat); one line
    when it is not a notebook."""
    if isinstance(notebook, dict):
        nb = notebook
    else:
        try:
            nb = json.loads(Path(notebook).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CifarkitError(
                f"cannot read the notebook {notebook}: {type(e).__name__}"
            ) from None
    if not isinstance(nb, dict):
        raise CifarkitError(f"{notebook} is JSON but not a notebook (a {type(nb).__name__})")
    if nb.get("nbformat") == 3 or "worksheets" in nb:
        try:
            import nbformat

            nb = json.loads(nbformat.writes(nbformat.reads(json.dumps(nb), as_version=4)))
        except Exception as e:  # noqa: BLE001 - whatever nbformat says, one line
            raise CifarkitError(
                f"{notebook} is an nbformat 3 notebook that cannot be converted ({e}): open and"
                " save it in Jupyter first"
            ) from None
    cells = nb.get("cells")
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise CifarkitError(f"{notebook} is not a notebook: it has no list of cells")
    return nb


def check_notebook(
    notebook: str | Path | dict,
    run: str | Path | None = None,
    *,
    verify: bool = False,
    data: str | None = None,
) -> HandinReport:
    """The hand-in report of an executed notebook (a path, or its JSON as a dict) and its run
    folder. `verify`: also re-evaluate the run's checkpoint on the test set (`verify.reevaluate`;
    `data`: where the test images are, default the run's own data or $CIFARKIT_DATA)."""
    nb = read_notebook(notebook)
    where = Path.cwd() if isinstance(notebook, dict) else Path(notebook).resolve().parent
    cells = nb["cells"]
    run_dir = find_run(cells, where, run)
    results, history, run_checks = None, None, []
    if run_dir is None or not run_dir.is_dir():
        why = (
            "the notebook's fit output names no run folder (out = ...)"
            if run_dir is None
            else f"{run_dir} is not here"
        )
        run_checks.append(
            Check(
                None,
                "run folder",
                f"cannot check the run: {why}; pass --run FOLDER (the folder fit wrote)",
                decides=True,
            )
        )
        run_dir = None
    else:
        try:
            results, history = read_records(run_dir)
        except CifarkitError as e:
            run_checks.append(Check(False, "run folder", str(e)))
    if results is not None:
        run_checks += [
            Check(
                True,
                "run folder",
                f"{run_dir} holds a finished run of {plural(len(history), 'epoch')}",
            ),
            check_records(results, history),
            *check_shown(cells, results, history),
        ]
        if verify:
            from .verify import reevaluate

            run_checks += reevaluate(run_dir, results, data, judged_block(cells, results), cells)
    report = HandinReport(
        [
            check_executed(cells),
            check_figures(cells),
            *check_rules(cells, results),
            *run_checks,
            *check_leaks(nb, run_dir, results),
            check_own_words(cells),
        ]
    )
    if not verify:
        report.append(
            Check(
                None,
                "results re-evaluated",
                "not done: results.json and the printed rules are believed as written (--verify"
                " evaluates the run's checkpoint on the test set again and traces its network)",
            )
        )
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
