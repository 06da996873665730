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


def test_the_stop_button_during_fit_stops_run_all_and_says_how_to_resume(tmp_path):
    """The kernel's stop button is a SIGINT to the kernel process: here the network sends it
    itself, in epoch 2. The fit cell ends in one line naming what was saved; no later cell runs."""
    from conftest import write_tree

    tree = write_tree(tmp_path / "tree")
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(s)
            for s in (
                "import os, signal\nimport torch\nfrom torch import nn\nimport cifarkit as ck\n"
                f"LAST = {str(tmp_path / 'run' / 'last.pt')!r}\n"
                "class Net(nn.Module):\n"
                "    def __init__(self):\n"
                "        super().__init__()\n"
                "        self.c, self.sent = nn.Conv2d(3, 10, 3), False\n"
                "    def forward(self, x):\n"
                "        # the first training batch after epoch 1's checkpoint: epoch 2\n"
                "        if self.training and os.path.exists(LAST) and not self.sent:\n"
                "            self.sent = True\n"
                "            os.kill(os.getpid(), signal.SIGINT)\n"
                "        return self.c(x).mean((2, 3))",
                f"cfg = ck.TrainConfig(epochs=3, batch_size=10, eval_batch_size=20,"
                f" data={str(tree)!r}, out={str(tmp_path / 'run')!r}, progress=False,"
                " precision='fp32', tta='none', device='cpu')\n"
                "result = ck.fit(cfg, model=Net, resume='auto')",
                "print('a later cell ran')",
            )
        ]
    )
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3")
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        client.execute()
    (error,) = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    assert error.ename == "RunStopped" and len(error.traceback) == 1, error.traceback
    assert "Interrupted during epoch 2" in error.traceback[0]
    assert 'resume="auto"' in error.traceback[0]
    assert not nb.cells[2].get("outputs")  # Run all stopped at the fit cell
    assert (tmp_path / "run" / "last.pt").is_file()
