"""Figures: they read only the history (and predictions) they are given, save PNGs, and label what
they show."""

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cifarkit.analysis.plots import (
    plot_compare,
    plot_confusion,
    plot_history,
    plot_lr,
    plot_misclassified,
)  # noqa: E402
from cifarkit.base import CLASSES


def fake_history(epochs: int = 5, steps: int = 4) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "eval_loss": 2.2 / e,
            "train_accuracy": 50 + 5 * e,
            "eval_accuracy": 48 + 5 * e,
            "lr": 0.1,
            "lrs": [0.1 * (s + 1) / steps for s in range(steps)],
        }
        for e in range(1, epochs + 1)
    ]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize(
    "make",
    [
        lambda p: plot_history(fake_history(), path=p),
        lambda p: plot_compare(
            {"a": fake_history(), "b": fake_history(3)}, path=p, reference=("write-up", 60.0, 5)
        ),
        lambda p: plot_lr(fake_history(), path=p),
    ],
    ids=["history", "compare", "lr"],
)
def test_epoch_plots_save_a_png_with_whole_epoch_ticks(tmp_path, make):
    path = tmp_path / "new" / "folder" / "fig.png"  # a missing folder is created
    fig = make(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    epoch_axes = [ax for ax in fig.axes if ax.get_xlabel() == "epoch"]
    assert epoch_axes
    for ax in epoch_axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # no "2.5 epochs"
        assert ticks[0] == 1 and ticks[-1] == 5  # the first and the last epoch are named
        # the same range on every epoch plot, the LR schedule's too
        assert ax.get_xlim() == (0, 5.5)


def test_twenty_epochs_get_ticks_at_1_5_10_15_20():
    fig = plot_history(fake_history(20))
    assert list(fig.axes[0].get_xticks()) == [1, 5, 10, 15, 20]


def test_history_plot_reports_the_final_and_best_epoch():
    history = fake_history()
    history[2]["eval_accuracy"] = 99.0  # best in the middle, so "best" and "final" differ
    fig = plot_history(
        history, final={"tta": "flip-translate", "tta_accuracy": 75.5}, label_smoothing=0.2
    )
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [
        ax.get_title() for ax in fig.axes
    ]
    texts += [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    # in the legend: no arrow across the lines
    assert "final test, single view: 73.00% (epoch 5)" in texts
    ring = [
        ln for ln in fig.axes[1].get_lines() if ln.get_label().startswith("final test, single view")
    ]
    assert (
        len(ring) == 1 and list(ring[0].get_xdata()) == [5] and list(ring[0].get_ydata()) == [73.0]
    )
    assert any("99.00% at epoch 3 (single view)" in t for t in texts)
    assert any("label smoothing 0.2" in t for t in texts)
    # The TTA result is its own marked point, labelled as the final test, not an epoch of the curve.
    star = [ln for ln in fig.axes[1].get_lines() if "TTA" in ln.get_label()]
    assert len(star) == 1 and list(star[0].get_ydata()) == [75.5]
    assert star[0].get_label() == "final test, flip-translate TTA (6 views): 75.50%"


def test_compare_legend_names_each_run_with_its_final_accuracy():
    fig = plot_compare(
        {"seed recipe": fake_history(4), "ours": fake_history(5)}, reference=("write-up", 83.61, 20)
    )
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [
        "seed recipe: 68.00% at epoch 4",
        "ours: 73.00% at epoch 5",
        "write-up: 83.61% at epoch 20",
    ]
    # one reported number is one point, not a line across all epochs
    ref = fig.axes[0].get_lines()[-1]
    assert list(ref.get_xdata()) == [20] and list(ref.get_ydata()) == [83.61]
    assert fig.axes[0].get_title()


@pytest.mark.slow  # starts a notebook kernel
def test_a_returned_figure_is_not_shown_twice_in_a_notebook():
    """The inline backend shows every open figure when a cell ends; a returned Figure that is the
    cell's value (no trailing ';') is displayed too. Whichever comes first shows it and closes it:
    one image either way.
    """
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    history = fake_history(3)
    cells = [
        "%matplotlib inline\nimport cifarkit as ck\nh = " + repr(history),
        "ck.plot_lr(h)",  # the cell's value
        "ck.plot_lr(h);",  # shown by the end-of-cell flush
        "fig = ck.plot_lr(h)\nfig",  # kept in a variable, then the value
        "ck.plot_lr(h)\nck.plot_history(h)",  # two figures, each once
        "ck.plot_history(h)\nck.plot_lr(h)",
    ]  # ...in the order the code draws them
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    counts = [sum("image/png" in o.get("data", {}) for o in c.outputs) for c in nb.cells]
    assert counts == [0, 1, 1, 1, 2, 2]

    def widths(cell) -> list[int]:
        import base64
        import struct

        pngs = [
            base64.b64decode(o["data"]["image/png"])
            for o in cell.outputs
            if "image/png" in o.get("data", {})
        ]
        return [struct.unpack(">I", png[16:20])[0] for png in pngs]  # the IHDR width

    lr_first, history_first = widths(nb.cells[4]), widths(nb.cells[5])
    # plot_lr is the narrower one
    assert lr_first[0] < lr_first[1] and history_first[0] > history_first[1]


# ---------------------------------------------------------------- readable where a notebook shows
# it
def _fake_lr_result():
    from cifarkit.training.lrfind import LRFindResult

    lrs = [1e-4 * 10 ** (i / 20) for i in range(80)]
    losses = [2.3 - 0.01 * i if i < 60 else 1.7 + 0.05 * (i - 60) for i in range(80)]
    return LRFindResult(
        lrs, losses, losses, lrs[59], lrs[30], lrs[59], True, 1e-4, 10.0, 100, recipe_lr=0.4
    )


def _gradcam_figure():
    from cifarkit.analysis.gradcamplot import plot_gradcam

    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    probs = torch.softmax(torch.randn(20, 10), 1)
    cams = torch.rand(8, 32, 32)
    return plot_gradcam(
        images,
        torch.randint(0, 10, (20,)),
        probs,
        torch.arange(8),
        cams,
        cams,
        CLASSES,
        layer="c4.1.1 (a 1x1 Conv2d 128 -> 256, output 4x4)",
        note="predictions with flip-translate TTA",
    )


def _images(n):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)


FIGURES = {
    "history": lambda: plot_history(
        fake_history(20),
        final={"tta": "flip-translate", "tta_accuracy": 88.0},
        label_smoothing=0.2,
        title="seed network, 20 epochs",
    ),
    "compare": lambda: plot_compare(
        {
            "a reconstruction of the write-up's recipe": fake_history(20),
            "this run": fake_history(20),
        },
        reference=("write-up", 83.61, 20),
    ),
    "lr": lambda: plot_lr(fake_history(20, steps=50)),
    "samples": (
        lambda: __import__("cifarkit").show_images(
            _images(24),
            [CLASSES[i % 10] for i in range(24)],
            title=(
                "as epoch 1 of training sees them: 4-px reflect-"
                "padded random crop, alternate flip, and more"
            ),
        )
    ),
    "mistakes": lambda: plot_misclassified(
        _images(40),
        torch.arange(40) % 10,
        torch.softmax(torch.randn(40, 10), 1),
        torch.arange(32),
        CLASSES,
        note="predictions with flip-translate TTA",
    ),
    "confusion": lambda: plot_confusion(
        torch.randint(0, 999, (10, 10)), CLASSES, note="single view"
    ),
    "gradcam": _gradcam_figure,
    "lr_find": (
        lambda: __import__("cifarkit.analysis.lrplot", fromlist=["x"]).plot_lr_find(
            _fake_lr_result()
        )
    ),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_is_readable_at_notebook_width(name):
    """Rendered as a notebook shows it (DISPLAY_DPI, tight box, scaled down to NOTEBOOK_PX if
    wider): every text at least 9 pt, every image panel at least 100 px wide, no rainbow / jet
    colour map."""
    import io
    import struct

    from matplotlib.image import AxesImage
    from matplotlib.text import Text

    from cifarkit.analysis.plots import DISPLAY_DPI, NOTEBOOK_PX

    fig = FIGURES[name]()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DISPLAY_DPI, bbox_inches="tight")
    width = struct.unpack(">I", buf.getvalue()[16:20])[0]
    scale = min(1.0, NOTEBOOK_PX / width)
    small = sorted(
        {
            (round(t.get_fontsize() * scale, 1), t.get_text()[:40])
            for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and t.get_fontsize() * scale < 9
        }
    )
    assert not small, f"{name}: {width} px wide, text under 9 pt as shown: {small[:5]}"
    for im in fig.findobj(AxesImage):
        assert im.get_cmap().name not in (
            "jet",
            "rainbow",
            "hsv",
            "gist_rainbow",
            "nipy_spectral",
        ), name
        shown = im.axes.get_position().width * fig.get_figwidth() * DISPLAY_DPI * scale
        assert shown >= 100, f"{name}: an image panel is {shown:.0f} px wide as shown"


def test_a_full_disk_while_saving_a_figure_keeps_the_previous_one_whole(mount_tmpfs):
    from cifarkit.base import CifarkitError

    disk = mount_tmpfs(512 * 1024)
    path = disk / "curves.png"
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "eval_loss": 1.2 / e,
            "train_accuracy": 50.0 + e,
            "eval_accuracy": 48.0 + e,
            "lr": 0.1,
        }
        for e in (1, 2, 3)
    ]
    plt.close(plot_history(history, path=path))
    before = path.read_bytes()
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"x" * max(0, free - 4096))  # 4 KB left: no figure fits
    with pytest.raises(CifarkitError, match="cannot save the figure .*curves.png"):
        plot_history(history * 2, path=path, title="a bigger figure")
    assert path.read_bytes() == before  # the previous figure, whole
    assert sorted(p.name for p in disk.iterdir()) == ["curves.png", "filler"]  # no temp file left
