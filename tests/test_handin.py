"""The hand-in check (`python -m cifarkit check-notebook`) on notebooks the tests write themselves:
a good
one passes, and each thing a grader would catch fails it, in one line that says what and where."""

import copy
import json

import pytest

from cifarkit.cli import main
from cifarkit.handin import check_notebook

RULES = """Course rules
[PASS] parameters < 1,000,000     77,050
[PASS] receptive field > 44       52 px
[PASS] depthwise-separable conv   dw + pw
[PASS] dilated conv               c2 (dilation 2)
[PASS] global average pooling     gap
[PASS] test accuracy >= 80%       81.50%
"""


def code(src, n, *outputs):
    return {
        "cell_type": "code",
        "source": src,
        "execution_count": n,
        "metadata": {},
        "outputs": list(outputs),
    }


def stream(text):
    return {"output_type": "stream", "name": "stdout", "text": text}


def image():
    return {
        "output_type": "display_data",
        "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Image>"},
        "metadata": {},
    }


def good_notebook():
    fit_out = (
        "TrainConfig(\n  model            = 'object:MyNet'\n  out              ="
        " 'runs/mine'\n)\n\nTest set: Average loss: 1.2000, Accuracy: 7000/10000 (70.00%)\n\nTest"
        " set: Average loss: 0.9000, Accuracy: 8150/10000 (81.50%)\nfinal test accuracy: single"
        " view 8150/10000 (81.50%); flip-translate TTA (6 views) 8290/10000\n"
    )
    return {
        "metadata": {"kernelspec": {"name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
        "cells": [
            {"cell_type": "markdown", "source": "# My assignment", "metadata": {}},
            code("import cifarkit as ck", 1),
            # a renamed network, extra cells
            code("class MyNet(nn.Module): ...", 2),
            code("result = ck.fit(cfg, model=MyNet, resume='auto')", 3, stream(fit_out)),
            code("ck.plot_history(result.history)\n# ck.plot_lr(result.history)", 4, image()),
            code("ck.plot_confusion(cm, classes)\nlr_result.plot()", 5, image(), image()),
            code("print(ck.check_rules(result.model, accuracy=81.5))", 6, stream(RULES)),
        ],
    }


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "runs" / "mine"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(
        json.dumps(
            {
                "single_view_accuracy": 81.5,
                "single_view_correct": 8150,
                "test_total": 10000,
                "tta_correct": 8290,
                "tta_accuracy": 82.9,
                "hardware": "GPU: Tesla T4",
            }
        )
    )
    (folder / "history.json").write_text(
        json.dumps([{"eval_correct": 7000}, {"eval_correct": 8150}])
    )
    (folder / "config.json").write_text(json.dumps({"out": "runs/mine", "data": None}))
    return folder


def write(tmp_path, nb):
    path = tmp_path / "Assignment7.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_a_good_notebook_is_ready(tmp_path, run, capsys):
    report = check_notebook(write(tmp_path, good_notebook()))
    assert report.ok, str(report)
    assert [c.ok for c in report].count(None) == 2  # what it cannot check, said as such
    assert main(["check-notebook", str(tmp_path / "Assignment7.ipynb")]) == 0
    out = capsys.readouterr().out
    assert (
        "[ OK ] test accuracy >= 80%: 81.50% single view (8150/10000" in out
        and out.rstrip().endswith("ready to hand in: every check cifarkit can make holds")
    )


def broken(change):
    nb = good_notebook()
    change(nb)
    return nb


def set_output(i, text):
    def change(nb):
        nb["cells"][i]["outputs"] = [stream(text)]

    return change


CASES = {
    "an error": (
        lambda nb: nb["cells"][4]["outputs"].append(
            {"output_type": "error", "ename": "X", "evalue": "", "traceback": []}
        ),
        "cells [4] hold an error",
    ),
    "out of order": (
        lambda nb: nb["cells"][2].update(execution_count=9),
        "execution counts out of order",
    ),
    "not executed": (
        lambda nb: nb["cells"][1].update(execution_count=None),
        "cells [1] not executed",
    ),
    "a missing figure": (lambda nb: nb["cells"][5]["outputs"].pop(), "cell 5: 1 of 2"),
    "a failed rule": (
        set_output(
            6,
            RULES.replace(
                "[PASS] dilated conv               c2 (dilation 2)",
                "[FAIL] dilated conv               none",
            ),
        ),
        "[FAIL] dilated conv",
    ),
    "no rules": (set_output(6, "done\n"), "prints no check_rules output"),
    "a leaked path": (
        lambda nb: nb["cells"][1]["outputs"].append(
            stream("cifarkit from /home/dev/src/cifarkit\n")
        ),
        "absolute paths in cell 1 (/home/",
    ),
    "another run's numbers": (
        lambda nb: nb["cells"][3]["outputs"][0].update(
            text=nb["cells"][3]["outputs"][0]["text"].replace("8150/10000", "8151/10000")
        ),
        "[FAIL] final numbers",
    ),
    "untrue metadata": (lambda nb: nb["metadata"].update(accelerator="TPU"), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_a_grader_catches_fails_the_check(tmp_path, run, case):
    change, needle = CASES[case]
    report = check_notebook(write(tmp_path, broken(change)))
    text = str(report)
    assert not report.ok and text.rstrip().endswith("failed"), text
    if needle:
        assert needle in text, text


def test_the_accuracy_rule_is_the_runs_not_the_notebooks(tmp_path, run):
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(
        json.dumps({**results, "single_view_accuracy": 79.9, "single_view_correct": 7990})
    )
    nb = broken(
        lambda nb: nb["cells"][3]["outputs"][0].update(
            text=nb["cells"][3]["outputs"][0]["text"].replace("8150/10000", "7990/10000")
        )
    )
    text = str(check_notebook(write(tmp_path, nb)))
    # the printed [PASS] 81.50% does not count
    assert "[FAIL] test accuracy >= 80%: 79.90% single view" in text
    (run / "results.json").write_text(json.dumps({**results, "test_total": 500}))
    assert "[ ?? ] test accuracy >= 80%: measured on 500 test images" in str(
        check_notebook(write(tmp_path, nb))
    )


def test_a_missing_run_folder_fails_and_run_points_elsewhere(tmp_path, run, capsys):
    moved = tmp_path / "elsewhere"
    run.rename(moved)
    path = write(tmp_path, copy.deepcopy(good_notebook()))
    assert "[FAIL] run folder" in str(check_notebook(path))
    assert check_notebook(path, run=moved).ok
    assert main(["check-notebook", str(path)]) == 1
    assert main(["check-notebook", str(tmp_path / "missing.ipynb")]) == 2
    assert "cannot read the notebook" in capsys.readouterr().err
