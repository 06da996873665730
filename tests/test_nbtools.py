"""In a real Jupyter kernel, a cifarkit refusal shows as its one line and stops Run all there; a bug
in the student's own code keeps its traceback."""

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow  # starts a kernel


def run_cells(*sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True)
    client.execute()
    return [next((o for o in c.outputs if o.output_type == "error"), None) for c in nb.cells]


def test_a_refusal_is_one_line_and_a_students_bug_keeps_its_traceback():
    errors = run_cells(
        "import cifarkit as ck",
        "ck.TrainConfig(epochs=0)",
        "def helper():\n    return 1 / 0\nhelper()",
    )
    assert errors[0] is None
    refusal = errors[1]
    assert (
        refusal.ename == "ConfigError"
        and refusal.traceback == ["ConfigError: epochs must be a whole number, got int 0"]
        or refusal.traceback[0].startswith("ConfigError: epochs must be")
    ), refusal.traceback
    assert len(refusal.traceback) == 1
    bug = errors[2]
    assert bug.ename == "ZeroDivisionError" and len(bug.traceback) > 1
    assert any("helper" in line for line in bug.traceback)
