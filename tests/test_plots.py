"""Figures: they read only the history (and predictions) they are given, save PNGs, and label what they show."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cifarkit import CLASSES, plot_compare, plot_confusion, plot_history, plot_lr, plot_misclassified  # noqa: E402


def fake_history(epochs: int = 5, steps: int = 4) -> list[dict]:
    return [{"epoch": e, "train_loss": 2.0 / e, "eval_loss": 2.2 / e, "train_accuracy": 50 + 5 * e,
             "eval_accuracy": 48 + 5 * e, "lr": 0.1, "lrs": [0.1 * (s + 1) / steps for s in range(steps)]}
            for e in range(1, epochs + 1)]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("make", [lambda p: plot_history(fake_history(), path=p),
                                  lambda p: plot_compare({"a": fake_history(), "b": fake_history(3)}, path=p,
                                                         reference=("write-up", 60.0)),
                                  lambda p: plot_lr(fake_history(), path=p)],
                         ids=["history", "compare", "lr"])
def test_epoch_plots_save_a_png_with_whole_epoch_ticks(tmp_path, make):
    path = tmp_path / "new" / "folder" / "fig.png"  # a missing folder is created
    fig = make(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    epoch_axes = [ax for ax in fig.axes if ax.get_xlabel() == "epoch"]
    assert epoch_axes
    for ax in epoch_axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # no "2.5 epochs"


def test_history_plot_reports_the_final_and_best_epoch():
    history = fake_history()
    history[2]["eval_accuracy"] = 99.0  # best in the middle, so "best" and "final" differ
    fig = plot_history(history, final={"tta": "flip-translate", "tta_accuracy": 75.5}, label_smoothing=0.2)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]
    assert any("test 73.00% (epoch 5, single view)" in t for t in texts)
    assert any("99.00% at epoch 3 (single view)" in t for t in texts)
    assert any("label smoothing 0.2" in t for t in texts)
    # The TTA result is its own marked point, labelled as the final test, not an epoch of the curve.
    star = [ln for ln in fig.axes[1].get_lines() if "TTA" in ln.get_label()]
    assert len(star) == 1 and list(star[0].get_ydata()) == [75.5]
    assert star[0].get_label() == "final test, flip-translate TTA (6 views): 75.50%"


def test_compare_legend_names_each_run_with_its_final_accuracy():
    fig = plot_compare({"seed recipe": fake_history(4), "ours": fake_history(5)}, reference=("write-up", 83.61))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["seed recipe: 68.00% at epoch 4", "ours: 73.00% at epoch 5", "write-up: 83.61%"]


def test_confusion_and_misclassified_figures(tmp_path):
    cm = torch.eye(10, dtype=torch.long) * 90 + 1
    fig = plot_confusion(cm, CLASSES, path=tmp_path / "cm.png")
    assert (tmp_path / "cm.png").exists()
    assert fig.axes[0].get_yticklabels()[0].get_text() == "airplane (91.0%)"  # 91 of the row's 100
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    probs = torch.full((4, 10), 0.02).index_put_((torch.arange(4), torch.tensor([1, 2, 3, 4])), torch.tensor(0.82))
    fig = plot_misclassified(images, torch.tensor([0, 0, 0, 0]), probs, torch.tensor([0, 2]), CLASSES, ncols=2,
                             path=tmp_path / "wrong.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["airplane\n-> automobile 82%", "airplane\n-> cat 82%"]


def test_notebook_before_after_cell_runs_outside_the_repository(tmp_path, monkeypatch):
    """On Colab the package is pip-installed and the working directory is not a checkout: the baseline
    history the comparison needs must come with the package, and the cell must draw both runs."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    import matplotlib.pyplot as plt

    import cifarkit as ck

    nb = json.loads((Path(__file__).resolve().parents[1] / "Assignment7.ipynb").read_text())
    (cell,) = [c for c in nb["cells"] if c["cell_type"] == "code" and "load_baseline" in "".join(c["source"])]
    monkeypatch.chdir(tmp_path)  # no checkpoints/ folder here
    history = [{"epoch": e, "eval_accuracy": 50.0 + e} for e in range(1, 4)]
    ns = {"ck": ck, "result": SimpleNamespace(history=history), "IMAGES": None}
    exec("".join(cell["source"]), ns)
    labels = [line.get_label() for line in plt.gcf().axes[0].get_lines()]
    assert any(label.startswith("seed recipe (retrained here): 81.98%") for label in labels), labels
    assert any(label.startswith("this run: 53.00%") for label in labels)
    assert ck.load_baseline("seed-recipe")[-1]["epoch"] == 20
    plt.close("all")
