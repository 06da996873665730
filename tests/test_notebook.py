"""The committed Assignment7.ipynb as an artifact: every figure inline, no error, and every number
it shows agrees with the committed run it came from (checkpoints/notebook)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB = json.loads((ROOT / "Assignment7.ipynb").read_text())
RUN = ROOT / "checkpoints" / "notebook"
PLOT_CALL = re.compile(r"\bck\.(plot_\w+|show_images|gradcam_misclassified)\(|\blr_result\.plot\(")


def code_cells():
    return [(i, c) for i, c in enumerate(NB["cells"]) if c["cell_type"] == "code"]


def source(cell) -> str:
    return "".join(cell["source"])


def text(cell) -> str:
    return "".join(
        "".join(o.get("text", "")) for o in cell.get("outputs", []) if o["output_type"] == "stream"
    )


def images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def test_every_plotting_cell_holds_each_of_its_figures_once():
    plotting = [(i, c) for i, c in code_cells() if PLOT_CALL.search(source(c))]
    assert len(plotting) >= 8 and sum(images(c) for _, c in plotting) >= 9
    for i, c in plotting:
        assert images(c) == len(PLOT_CALL.findall(source(c))), f"cell {i}: {images(c)} images"
    assert sum(images(c) for _, c in code_cells()) == sum(
        len(PLOT_CALL.findall(source(c))) for _, c in code_cells()
    )


def test_no_cell_holds_an_error_and_every_cell_ran_in_order():
    counts = []
    for i, c in code_cells():
        assert not [o for o in c["outputs"] if o["output_type"] == "error"], (
            f"cell {i} holds an error"
        )
        assert c["execution_count"] is not None, f"cell {i} was not executed"
        counts.append(c["execution_count"])
    # one "Run all", top to bottom
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_the_saved_run_is_the_full_one_and_matches_the_committed_run():
    res = json.loads((RUN / "results.json").read_text())
    cfg = json.loads((RUN / "config.json").read_text())
    history = json.loads((RUN / "history.json").read_text())
    outputs = "\n".join(text(c) for _, c in code_cells())
    assert "full run: 20 epochs" in outputs and "smoke run" not in outputs
    assert cfg["epochs"] == res["epochs"] == len(history) == 20 and cfg["limit_train"] is None
    assert res["test_total"] == 10000
    sv = (
        f"single view: {res['single_view_correct']}/{res['test_total']} ="
        f" {res['single_view_accuracy']:.2f}%"
    )
    tta = f"{res['tta_correct']}/{res['test_total']} = {res['tta_accuracy']:.2f}%"
    assert sv in outputs and tta in outputs
    assert f"[PASS] test accuracy >= 80%       {res['single_view_accuracy']:.2f}%" in outputs
    assert (
        f"{res['hardware']}" in outputs
        and f"wall time          {res['wall_seconds'] / 60:.1f} min" in outputs
    )
    # every per-epoch test line of the training cell is an epoch of the committed history
    (train,) = [c for _, c in code_cells() if "\nresult = ck.fit(" in source(c)]
    lines = re.findall(r"Accuracy: (\d+)/10000", text(train))
    assert [int(n) for n in lines[:20]] == [h["eval_correct"] for h in history]


@pytest.mark.parametrize("name", ["config.json", "history.csv", "history.json", "results.json"])
def test_the_committed_run_folder_is_complete(name):
    assert (RUN / name).is_file() and (ROOT / "checkpoints" / "notebook.pt").is_file()


def filled_in(nb: dict) -> dict:
    """The notebook as a student hands it in: their names and their own conclusion in place of the
    template's."""
    from cifarkit.handin import TEMPLATE

    nb = json.loads(json.dumps(nb))
    for c in nb["cells"]:
        text = "".join(c["source"])
        for marker in TEMPLATE.values():
            text = text.replace(marker, "Ada Lovelace and Alan Turing wrote this.")
        c["source"] = text
    return nb


def test_the_committed_notebook_is_a_template_and_ready_once_filled_in(tmp_path):
    from cifarkit.handin import check_notebook

    report = check_notebook(ROOT / "Assignment7.ipynb", run=RUN)
    # everything holds but the words only a student can write
    assert [c.what for c in report if c.ok is False] == ["your own words"], str(report)
    path = tmp_path / "Assignment7.ipynb"
    path.write_text(json.dumps(filled_in(NB)))
    report = check_notebook(path, run=RUN)
    assert report.ok, str(report)
    assert [c.what for c in report if c.ok is None] == ["your own words", "results re-evaluated"]


def test_the_findings_are_the_runs_own_numbers():
    res = json.loads((RUN / "results.json").read_text())
    (cell,) = [c for _, c in code_cells() if source(c).startswith("ck.findings(")]
    md = "".join(
        "".join(o["data"]["text/markdown"])
        for o in cell["outputs"]
        if "text/markdown" in o.get("data", {})
    )
    assert (
        f"{res['single_view_accuracy']:.2f}% single view ({res['single_view_correct']}/10000" in md
    )
    assert (
        f"{res['tta_accuracy']:.2f}% with {res['tta']} TTA" in md
        and "All six course rules pass" in md
    )
    assert "**Confusions**" in md and "**Grad-CAM on the 8 most confident mistakes**" in md


def test_nothing_of_the_executing_machine_shows():
    leak = re.compile(r"(?<![\w.~/-])/(tmp|work|root|home|Users)/")
    for i, c in code_cells():
        assert not leak.search(text(c)), f"cell {i}: {leak.search(text(c)).group(0)}"
    assert "accelerator" not in NB["metadata"]  # the run used the CPU; nothing claims a GPU
    for name in ("config.json", "results.json"):
        assert not leak.search((RUN / name).read_text()), name
