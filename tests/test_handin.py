"""The hand-in check (`python -m cifarkit check-notebook`) on notebooks the tests write themselves:
a good
one passes, and each thing a grader would catch fails it, in one line that says what and where."""

import copy
import json

import pytest

from cifarkit.cli import main
from cifarkit.handin import check_notebook

from conftest import kernel_cell

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
        " view 8150/10000 (81.50%); flip-translate TTA (6 views) 8290/10000 (82.90%)\n"
    )
    return {
        "metadata": {"kernelspec": {"name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
        "cells": [
            {
                "cell_type": "markdown",
                "source": "# My assignment\n**Authors:** Ada L.",
                "metadata": {},
            },
            code("import cifarkit as ck", 1),
            # a renamed network, extra cells
            code("class MyNet(nn.Module): ...", 2),
            code("result = ck.fit(cfg, model=MyNet, resume='auto')", 3, stream(fit_out)),
            code("ck.plot_history(result.history)\n# ck.plot_lr(result.history)", 4, image()),
            code("ck.plot_confusion(cm, classes)\nlr_result.plot()", 5, image(), image()),
            code("print(ck.check_rules(result.model, accuracy=81.5))", 6, stream(RULES)),
            {"cell_type": "markdown", "source": "## Conclusion\nMy own words.", "metadata": {}},
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
                "parameters": 77050,
                "epochs": 2,
                "hardware": "GPU: Tesla T4",
            }
        )
    )
    (folder / "history.json").write_text(
        json.dumps(
            [
                {"eval_correct": 7000, "eval_total": 10000},
                {"eval_correct": 8150, "eval_total": 10000},
            ]
        )
    )
    (folder / "config.json").write_text(json.dumps({"out": "runs/mine", "data": None}))
    return folder


def write(tmp_path, nb):
    path = tmp_path / "Assignment7.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_a_good_notebook_is_ready(tmp_path, run, capsys):
    report = check_notebook(write(tmp_path, good_notebook()))
    assert report.ok and report.state == "ready", str(report)
    # what it cannot check, said as such
    assert [c.what for c in report if c.ok is None] == ["your own words", "results re-evaluated"]
    assert main(["check-notebook", str(tmp_path / "Assignment7.ipynb")]) == 0
    out = capsys.readouterr().out
    assert (
        "[ OK ] test accuracy >= 80%: 81.50% single view (8150/10000" in out
        and out.rstrip().endswith("ready to hand in: every check cifarkit can make holds")
    )
    assert "In [6], the trained network's 77,050 parameters" in out


def broken(change):
    nb = good_notebook()
    change(nb)
    return nb


def set_output(i, text):
    def change(nb):
        nb["cells"][i]["outputs"] = [stream(text)]

    return change


def fit_text(change):
    def edit(nb):
        out = nb["cells"][3]["outputs"][0]
        out["text"] = change(out["text"])

    return edit


def findings(count, percent, tta):
    """The findings cell's output as `ck.findings` writes it (Markdown, and its plain text)."""
    text = (
        f"**Accuracy.** {percent:.2f}% single view ({count}/10000 test images of CIFAR-10) after 2"
        f" epochs, {tta:.2f}% with flip-translate TTA."
    )
    return {
        "output_type": "display_data",
        "data": {"text/markdown": text, "text/plain": text},
        "metadata": {},
    }


OTHER_NET_FAILS = RULES.replace("77,050", "1,204,000").replace(
    "[PASS] parameters", "[FAIL] parameters"
)

CASES = {
    "an error": (
        lambda nb: nb["cells"][4]["outputs"].append(
            {"output_type": "error", "ename": "X", "evalue": "", "traceback": []}
        ),
        "In [4] hold an error",
    ),
    "out of order": (
        lambda nb: nb["cells"][2].update(execution_count=9),
        "execution counts out of order",
    ),
    "not executed": (
        lambda nb: nb["cells"][1].update(execution_count=None),
        "code cell 1 (not run) not executed",
    ),
    "a missing figure": (lambda nb: nb["cells"][5]["outputs"].pop(), "In [5]: 1 of 2"),
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
    "rules of another network only": (
        set_output(6, RULES.replace("77,050", "324,586")),
        "no check_rules output of the trained network (77,050 parameters in results.json); the"
        " notebook shows rules of networks of 324,586 parameters",
    ),
    "a developer's path": (
        lambda nb: nb["cells"][1]["outputs"].append(stream("cifarkit from /tmp/x/src/cifarkit\n")),
        "paths of another machine in In [1] (/tmp/",
    ),
    "another run's numbers": (
        fit_text(lambda t: t.replace("single view 8150/10000", "single view 8151/10000")),
        "In [3] shows 8151/10000; the run's records: 8150/10000 single view",
    ),
    "a headline edited, the true count shown elsewhere": (
        lambda nb: nb["cells"].insert(
            7, code("print(headline)", 7, stream("final test acc.    single view: 9500/10000\n"))
        ),
        "In [7] shows 9500/10000",
    ),
    "a percentage edited beside its true count": (
        fit_text(
            lambda t: t.replace(
                "single view 8150/10000 (81.50%)", "single view 8150/10000 (91.50%)"
            )
        ),
        "In [3] shows 8150/10000 as 91.50% (that count is 81.50%)",
    ),
    "an epoch's percentage edited": (
        fit_text(lambda t: t.replace("7000/10000 (70.00%)", "7000/10000 (80.00%)")),
        "epoch 1: the fit output shows 7000/10000 as 80.00% (that count is 70.00%)",
    ),
    "the findings' count edited": (
        lambda nb: nb["cells"].insert(7, code("ck.findings(...)", 7, findings(9150, 91.5, 82.9))),
        "In [7] shows 9150/10000",
    ),
    "the findings' percentages edited": (
        lambda nb: nb["cells"].insert(7, code("ck.findings(...)", 7, findings(8150, 91.5, 92.9))),
        "In [7] shows 8150/10000 as 91.50% (that count is 81.50%); In [7] shows 92.90% TTA,"
        " results.json 82.90%",
    ),
    "a summary table of other parameters": (
        lambda nb: nb["cells"][2]["outputs"].append(stream("Total params: 67,050\n")),
        "[FAIL] network summary: the summary tables show other parameter counts (In [2]: 67,050)",
    ),
    "an epoch line that differs": (
        fit_text(lambda t: t.replace("Accuracy: 7000/10000", "Accuracy: 7100/10000")),
        "epoch 1: the fit output shows 7100 right, history.json 7000/10000",
    ),
    "the template's words": (
        lambda nb: nb["cells"][-1].update(source="*Write here what you changed, ...*"),
        "the conclusion still holds the template's text",
    ),
    "untrue metadata": (lambda nb: nb["metadata"].update(accelerator="TPU"), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_a_grader_catches_fails_the_check(tmp_path, run, case):
    change, needle = CASES[case]
    report = check_notebook(write(tmp_path, broken(change)))
    text = str(report)
    assert report.state == "not ready" and text.rstrip().endswith("failed"), text
    if needle:
        assert needle in text, text


@pytest.mark.parametrize(
    "change",
    [
        # a comparison cell after training shows another network, failing a rule
        lambda nb: nb["cells"].insert(
            7, code("print(ck.check_rules(Other()))", 7, stream(OTHER_NET_FAILS))
        ),
        # the findings, as generated
        lambda nb: nb["cells"].insert(7, code("ck.findings(...)", 7, findings(8150, 81.5, 82.9))),
        # the summary table of the trained network, and of another one
        lambda nb: nb["cells"][2]["outputs"].append(
            stream("Total params: 77,050\nTrainable params: 77,050\n\nTotal params: 5,000\n")
        ),
        # torchsummary counting a shared layer twice, with the true count under it
        lambda nb: nb["cells"][2]["outputs"].append(
            stream(
                "Total params: 80,000\nTotal params above: torchsummary counts a layer once per"
                " call and misses parameters held outside layers; the network has 77,050"
                " parameters, each counted once\n"
            )
        ),
        # a student's own machine: /home paths are theirs
        lambda nb: nb["cells"][1]["outputs"].append(stream("data from /home/ada/cifar.tar\n")),
        # the second Run all: the loaded run's one-line epoch log, with counts
        fit_text(
            lambda t: t.replace(
                "Test set: Average loss: 1.2000, Accuracy: 7000/10000 (70.00%)",
                "epoch 1/2: train loss 1.5 acc 50.00% | test loss 1.2000 acc 7000/10000 (70.00%)",
            )
        ),
    ],
)
def test_what_a_grader_must_not_fail(tmp_path, run, change):
    report = check_notebook(write(tmp_path, broken(change)))
    assert report.ok, str(report)


def test_a_built_in_network_trained_beside_a_network_of_ones_own_cannot_be_told(tmp_path, run):
    """A student who wrote a network (its rules printed) but trained the seed network: not
    "ready"."""
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "model": "seed"}))
    # the cell that defines the student's network also prints its rules
    nb = broken(set_output(2, RULES.replace("77,050", "324,586")))
    report = check_notebook(write(tmp_path, nb))
    assert report.state == "cannot tell", str(report)
    assert (
        "seed (77,050 parameters) was trained, while the notebook also checks networks of 324,586"
        in str(report)
    )


def test_the_untouched_template_and_a_printout_claiming_more_are_not_ready(tmp_path, run):
    nb = broken(lambda nb: nb["cells"][0].update(source="**Authors:** *your name(s) here.*"))
    assert "[FAIL] your own words: the authors line still holds" in str(
        check_notebook(write(tmp_path, nb))
    )
    claims = broken(set_output(6, RULES.replace("81.50%", "95.00%")))
    assert "the notebook prints 95.00% for the trained network, results.json 81.50%" in str(
        check_notebook(write(tmp_path, claims))
    )


def test_a_results_json_that_contradicts_itself_fails(tmp_path, run):
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "single_view_accuracy": 95.0}))
    text = str(check_notebook(write(tmp_path, good_notebook())))
    assert "[FAIL] run records agree: results.json says single view 95.0% but 8150/10000 is" in text
    (run / "results.json").write_text(
        json.dumps({**results, "single_view_correct": 8300, "single_view_accuracy": 83.0})
    )
    text = str(check_notebook(write(tmp_path, good_notebook())))
    assert "the last epoch in history.json has 8150/10000 right, results.json 8300/10000" in text


def test_the_accuracy_rule_is_the_runs_not_the_notebooks(tmp_path, run):
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(
        json.dumps({**results, "single_view_accuracy": 79.9, "single_view_correct": 7990})
    )
    (run / "history.json").write_text(json.dumps([{"eval_correct": 7000}, {"eval_correct": 7990}]))
    nb = broken(fit_text(lambda t: t.replace("8150/10000 (81.50%)", "7990/10000 (79.90%)")))
    nb["cells"][6]["outputs"] = [stream(RULES.replace("81.50%", "79.90%"))]
    text = str(check_notebook(write(tmp_path, nb)))
    assert "[FAIL] test accuracy >= 80%: 79.90% single view" in text
    # a smoke run decides nothing: not "ready"
    (run / "results.json").write_text(
        json.dumps(
            {
                **results,
                "test_total": 500,
                "single_view_correct": 400,
                "tta_correct": 410,
                "single_view_accuracy": 80.0,
                "tta_accuracy": 82.0,
            }
        )
    )
    (run / "history.json").write_text(
        json.dumps(
            [{"eval_correct": 300, "eval_total": 500}, {"eval_correct": 400, "eval_total": 500}]
        )
    )
    smoke = broken(
        fit_text(
            lambda t: (
                t.replace("7000/10000 (70.00%)", "300/500 (60.00%)")
                .replace("8150/10000 (81.50%)", "400/500 (80.00%)")
                .replace("8290/10000 (82.90%)", "410/500 (82.00%)")
            )
        )
    )
    report = check_notebook(write(tmp_path, smoke))
    assert report.state == "cannot tell", str(report)
    assert (
        "[ ?? ] test accuracy >= 80%: undecided: measured on 500 of the 10,000 test images"
        in str(report)
    )


def test_a_missing_run_folder_cannot_be_told_and_run_points_elsewhere(tmp_path, run, capsys):
    moved = tmp_path / "elsewhere"
    run.rename(moved)
    path = write(tmp_path, copy.deepcopy(good_notebook()))
    report = check_notebook(path)
    assert report.state == "cannot tell" and "[ ?? ] run folder: cannot check the run" in str(
        report
    )
    assert "[FAIL]" not in str(report)
    assert check_notebook(path, run=moved).ok
    assert main(["check-notebook", str(path)]) == 3
    assert main(["check-notebook", str(tmp_path / "missing.ipynb")]) == 2
    assert "cannot read the notebook" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, needle",
    [
        ([{"epoch": 1}], "is JSON but not a notebook (a list)"),
        ({"cells": None}, "is not a notebook: it has no list of cells"),
        ({"cells": [1, 2]}, "is not a notebook: it has no list of cells"),
    ],
)
def test_json_that_is_not_a_notebook_is_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(content))
    assert main(["check-notebook", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("results.json", [1, 2], "holds a JSON list, not the dict a finished run writes"),
        ("history.json", {"a": 1}, "holds a JSON dict, not the list a finished run writes"),
        ("results.json", {"final_test_accuracy": 81.5}, "written by an older cifarkit"),
    ],
)
def test_run_records_of_another_shape_are_one_failed_line(tmp_path, run, name, content, needle):
    (run / name).write_text(json.dumps(content))
    text = str(check_notebook(write(tmp_path, good_notebook())))
    assert "[FAIL] run folder: " in text and needle in text, text


def test_an_nbformat_3_notebook_is_read(tmp_path, run):
    nbformat = pytest.importorskip("nbformat")
    v4 = nbformat.from_dict(good_notebook())
    v3 = nbformat.convert(v4, 3)
    path = tmp_path / "Assignment7.ipynb"
    path.write_text(nbformat.writes(v3, version=3))
    assert "worksheets" in json.loads(path.read_text())
    report = check_notebook(path)
    assert report.ok, str(report)


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path, run):
    import subprocess
    import sys

    path = write(tmp_path, good_notebook())
    p = subprocess.run(
        f"{sys.executable} -m cifarkit check-notebook {path} | head -1",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert p.stdout.startswith("[ OK ] executed") and "Traceback" not in p.stderr, p.stderr


def tiny_cfg(tmp_path, tree):
    """One epoch on the tiny tree, on the CPU (compared with what the CPU evaluates again)."""
    from cifarkit.config import TrainConfig

    return TrainConfig(
        epochs=1,
        batch_size=10,
        eval_batch_size=10,
        data=str(tree),
        out=str(tmp_path / "run"),
        progress=False,
        precision="fp32",
        tta="none",
        device="cpu",
    )


def test_verify_reevaluates_the_checkpoint_and_catches_a_claim_it_did_not_make(tmp_path, tree):
    from cifarkit.analysis.rules import check_rules as check_rules_of
    from cifarkit.training.trainer import fit
    from cifarkit.verify import reevaluate

    cfg = tiny_cfg(tmp_path, tree)
    result = fit(cfg)
    results = result.final
    (check,) = reevaluate(tmp_path / "run", results)
    assert check.ok is True, str(check)
    claimed = {**results, "single_view_correct": results["single_view_correct"] + 5}
    (check,) = reevaluate(tmp_path / "run", claimed)
    assert check.ok is False and "were not made by this checkpoint" in str(check)
    # the rule block the notebook printed, against the checkpoint's network traced again
    printed = [(c.verdict.strip(), c.rule, c.value) for c in check_rules_of(result.model)]
    rules, check = reevaluate(tmp_path / "run", results, printed=("In [9]", printed))
    assert rules.ok is True and check.ok is True, f"{rules}\n{check}"
    edited = [(v, r, "94 px" if r.startswith("receptive") else e) for v, r, e in printed]
    rules, _ = reevaluate(tmp_path / "run", results, printed=("In [9]", edited))
    assert rules.ok is False and "In [9] shows [PASS] 94 px, the network [PASS] 84 px" in str(rules)
    (tmp_path / "run" / "last.pt").unlink()
    (check,) = reevaluate(tmp_path / "run", results)
    assert check.ok is None  # nothing to evaluate: said so


NOTEBOOK_NET = """%matplotlib inline
import torch.nn.functional as F
from torch import nn
import a_package_only_the_student_has

WIDTH = 8


class CellNet(nn.Module):
    def __init__(self, width=WIDTH):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=2, dilation=2)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


NETWORK = CellNet
print("this line is not run when the network is rebuilt")
"""


def test_verify_rebuilds_a_network_a_notebook_cell_defines_and_checks_it_is_the_trained_one(
    tmp_path, tree
):
    """The notebook's own path: the network is a class in a cell (recorded as object:CellNet, which
    no import rebuilds). --verify rebuilds it from the notebook's cells (imports, definitions,
    literal constants; nothing else runs), requires it to be the network that trained the
    checkpoint, and then evaluates and traces it; a class edited after training is a FAIL."""
    from cifarkit.analysis.rules import check_rules as check_rules_of
    from cifarkit.training.trainer import fit
    from cifarkit.verify import reevaluate

    # trained as a Jupyter kernel defines it: code in __main__, its source only in linecache
    source = NOTEBOOK_NET.replace("%matplotlib inline", "").replace(
        "import a_package_only_the_student_has", ""
    )
    ns = kernel_cell(source)
    cfg = tiny_cfg(tmp_path, tree)
    result = fit(cfg, model=ns["CellNet"])
    assert result.config.model == "object:CellNet"
    printed = (
        "In [9]",
        [(c.verdict.strip(), c.rule, c.value) for c in check_rules_of(result.model)],
    )

    def cells(net_source):
        return [
            code("import cifarkit as ck", 1),
            code(net_source, 2),
            code("result = ck.fit(cfg)", 3),
        ]

    same, rules, check = reevaluate(
        tmp_path / "run", result.final, None, printed, cells(NOTEBOOK_NET)
    )
    assert same.ok is True and "CellNet as In [2] defines it is the network that trained" in str(
        same
    )
    assert rules.ok is True and check.ok is True, f"{rules}\n{check}"
    # edited after training, same parameters: rules printed from it would not be the trained net's
    edited = NOTEBOOK_NET.replace("padding=2, dilation=2", "padding=1, dilation=1")
    (same,) = reevaluate(tmp_path / "run", result.final, None, printed, cells(edited))
    assert same.ok is False and "is not the network that trained last.pt" in str(same)
    assert "layers and code differ" in str(same) and same.decides
    # a class of the same name written after the training cell (another experiment) is not the
    # trained one: the definition before the cell whose fit printed the model is
    fit_out = stream(f"  model            = '{result.config.model}'\n")
    later = [*cells(NOTEBOOK_NET)[:2], code("result = ck.fit(cfg)", 3, fit_out), code(edited, 4)]
    same, rules, check = reevaluate(tmp_path / "run", result.final, None, printed, later)
    assert same.ok is True and "as In [2] defines it" in str(same), str(same)
    # trained with other constructor arguments (NETWORK = CellNet(...), a partial): the same code,
    # another network; that cannot be rebuilt, and is not a failure
    wider = NOTEBOOK_NET.replace("WIDTH = 8", "WIDTH = 16")
    (same,) = reevaluate(tmp_path / "run", result.final, None, printed, cells(wider))
    assert (
        same.ok is None and "built with other arguments or constants" in str(same) and same.decides
    )
    # NETWORK = functools.partial(CellNet, width=6): its keywords are recorded and used again
    import functools

    import cifarkit as ck

    wide = fit(
        tiny_cfg(tmp_path / "p", tree),
        model=ck.own_network(functools.partial(ns["CellNet"], width=6)),
    )
    assert wide.config.model == "object:CellNet(width=6)" and wide.network == "CellNet"
    same, check = reevaluate(tmp_path / "p" / "run", wide.final, None, None, cells(NOTEBOOK_NET))
    assert same.ok is True and check.ok is True, f"{same}\n{check}"
    # a notebook without the class: cannot be rebuilt, said so
    (check,) = reevaluate(tmp_path / "run", result.final, None, printed, cells("x = 1"))
    assert check.ok is None and "no code cell defines CellNet" in str(check)
    broken = NOTEBOOK_NET.replace("WIDTH = 8", "WIDTH = undefined_name")  # not a literal: left out
    (check,) = reevaluate(tmp_path / "run", result.final, None, printed, cells(broken))
    assert check.ok is None and "In [2] does not run here: NameError: name 'WIDTH'" in str(check)


def test_a_notebook_network_is_rebuilt_from_its_cells_and_nothing_else_runs(tmp_path):
    """Helpers and constants from earlier cells are there; magics, shell lines, calls and
    assignments of computed values are not run; a missing class is (None, None)."""
    from cifarkit.verify import network_from_notebook

    marker = tmp_path / "ran"
    cells = [
        code(f"%pip install something\n!ls\nopen({str(marker)!r}, 'w').write('x')", 1),
        code(
            "from torch import nn\nWIDTH = 4\nDATA = load_everything()\n\n\n"
            "def block(c):\n    return nn.Conv2d(3, c, 3)",
            2,
        ),
        code(
            "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.b = block(WIDTH)\n\n\nnet = Net()\nnet.train_for_hours()",
            3,
        ),
    ]
    where, maker = network_from_notebook(cells, "Net")
    assert where == "In [3]" and maker().b.out_channels == 4
    assert not marker.exists()  # the call in the first cell did not run
    assert network_from_notebook(cells, "Other") == (None, None)
