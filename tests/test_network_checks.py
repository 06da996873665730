"""A network that cannot classify CIFAR-10 is refused in one line wherever cifarkit runs it (fit
before the first step, predict, evaluate, Grad-CAM, the tracer), and every probe runs a batch of
two, so a head that only breaks on a batch of one (x.squeeze()) works everywhere."""

import json
import os
import shutil
import textwrap

import pytest
import torch
from PIL import Image
from torch import nn

import cifarkit as ck
from cifarkit.analysis.gradcam import gradcam
from cifarkit.analysis.rules import check_rules
from cifarkit.analysis.summary import summary_text
from cifarkit.base import CifarkitError
from cifarkit.cli import main
from cifarkit.inference import predict_image
from cifarkit.models import NetworkError


class Head(nn.Module):
    """conv -> GAP -> linear(out), and what forward returns is up to `kind`."""

    def __init__(self, out: int = 10, kind: str = "logits"):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, out)
        self.kind = kind

    def forward(self, x):
        x = torch.relu(self.conv(x)).mean((2, 3))
        y = self.fc(x)
        if self.kind == "tuple":
            return y, x
        if self.kind == "int":
            return y.argmax(1)
        if self.kind == "squeeze":  # (N, 10) for N > 1; (10,) for one image
            return self.fc(x.unsqueeze(1)).squeeze()
        if self.kind == "raises":
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x8 and 16x10)")
        return y


BAD = {
    "5 outputs": (
        Head(5),
        (
            "returned shape (2, 5) for a batch of 2 images; a CIFAR-10 network returns (2, 10) "
            "class scores; CIFAR-10 has 10 classes, so the last layer needs 10 outputs"
        ),
    ),
    "100 outputs": (Head(100), "returned shape (2, 100)"),
    "a tuple": (
        Head(kind="tuple"),
        "returned a tuple of 2: tensor (2, 10), tensor (2, 8) in eval mode, not the class scores",
    ),
    "class indices": (Head(kind="int"), "returned torch.int64 values; class scores must be floats"),
    "a failing forward": (
        Head(kind="raises"),
        (
            "Head's forward fails on a batch of shape (2, 3, 32, 32): "
            "RuntimeError: mat1 and mat2 shapes cannot be multiplied"
        ),
    ),
}


def cfg_for(tmp_path, **kw):
    return ck.TrainConfig(
        epochs=1,
        batch_size=50,
        eval_batch_size=50,
        device="cpu",
        precision="fp32",
        progress=False,
        lookahead=False,
        tta="none",
        out=str(tmp_path / "run"),
        **kw,
    )


@pytest.mark.parametrize("what", sorted(BAD))
def test_fit_refuses_before_the_first_step_and_writes_nothing(tmp_path, learnable_data, what):
    net, needle = BAD[what]
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(NetworkError) as e:
        ck.fit(cfg_for(tmp_path), data=learnable_data, model=net)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # not one step taken
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("what", sorted(BAD))
def test_predict_gradcam_and_summary_refuse_in_one_line(tmp_path, what):
    net, needle = BAD[what]
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    for call in (
        lambda: predict_image(net, image),
        lambda: gradcam(net, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 0),
        # (the RF table and the rules read structure: any output will do)
        lambda: summary_text(net),
    ):
        with pytest.raises(CifarkitError) as e:
            call()
        line = str(e.value)
        assert "\n" not in line and (needle in line or "forward pass fails" in line), line


def test_a_head_that_breaks_only_on_one_image_works_everywhere(tmp_path, learnable_data):
    net = Head(kind="squeeze")
    r = ck.fit(cfg_for(tmp_path), data=learnable_data, model=net)
    assert r.final["test_total"] == 100
    p = predict_image(net, Image.new("RGB", (64, 48)))  # one image: run as a batch of two
    assert (
        len(p.top) == 3
        and abs(sum(v for _, v in predict_image(net, Image.new("RGB", (8, 8)), top=10).top) - 1)
        < 1e-5
    )
    maps = gradcam(net, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 3)
    assert maps.shape == (1, 32, 32)
    assert [c.rule for c in check_rules(net)][0] == "parameters < 1,000,000"


def test_a_checkpoint_of_a_100_class_network_is_refused_by_predict_and_evaluate(tmp_path, capsys):
    (tmp_path / "hundred.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding=1)
                self.fc = nn.Linear(8, 100)

            def forward(self, x):
                return self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        """)
    )
    from cifarkit.runfolder.checkpoint import save_checkpoint

    spec = f"{tmp_path / 'hundred.py'}:Net"
    net = ck.build_model(spec)
    cfg = ck.TrainConfig(model=spec, tta="none")
    save_checkpoint(
        tmp_path / "h.pt",
        {"config": cfg.to_dict(), "model": net.state_dict(), "epoch": 1, "resumable": False},
    )
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    code = main(["predict", "--checkpoint", str(tmp_path / "h.pt"), str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.count("\n") == 1
        and "returned shape (2, 100)" in err
        and "10 outputs" in err
    )


def test_an_import_that_exits_is_one_line(tmp_path, capsys):
    (tmp_path / "script.py").write_text("import sys\nprint('training...')\nsys.exit(0)\n")
    code = main(["summary", "--model", f"{tmp_path / 'script.py'}:Net"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "called sys.exit(0)" in err and "__main__" in err


def test_typed_paths_are_kept_relative_where_they_can_be_and_one_file_is_one_model(
    tmp_path, monkeypatch
):
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    for folder in (proj, elsewhere):
        folder.mkdir()
        (folder / "mine.py").write_text(
            "from torch import nn\nclass Net(nn.Sequential):\n    def __init__(self):\n"
            "        super().__init__(nn.Flatten(), nn.Linear(3072, 10))\n"
        )
    monkeypatch.chdir(proj)
    named = [
        ck.TrainConfig(model=m) for m in ("mine.py:Net", "./mine.py:Net", f"{proj}/mine.py:Net")
    ]
    assert {c.model for c in named} == {"mine.py:Net"}  # one file named three ways: one model
    assert ck.TrainConfig(model="../elsewhere/mine.py:Net").model == "../elsewhere/mine.py:Net"
    outside = ck.TrainConfig(model=f"{elsewhere}/mine.py:Net", data=f"{elsewhere}/c.tar.gz")
    assert outside.model == f"{elsewhere}/mine.py:Net" and outside.data == f"{elsewhere}/c.tar.gz"
    inside = ck.TrainConfig(
        data=f"{proj}/data/c.tar.gz", data_root=f"{proj}/dl", out=f"{proj}/runs/a"
    )
    assert (inside.data, inside.data_root, inside.out) == ("data/c.tar.gz", "dl", "runs/a")
    assert ck.TrainConfig(data="~/c.tar.gz").data == os.path.expanduser("~/c.tar.gz")


def test_a_fresh_process_in_another_folder_finds_a_runs_relative_paths(
    tmp_path, monkeypatch, learnable_data
):
    from cifarkit.analysis.compare import compare_runs
    from cifarkit.runfolder.checkpoint import model_from_checkpoint
    from cifarkit.runfolder.files import rebase_paths, started_in

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "mine.py").write_text(
        "from torch import nn\nclass Net(nn.Sequential):\n    def __init__(self):\n"
        "        super().__init__(nn.Flatten(), nn.Linear(3072, 10))\n"
    )
    monkeypatch.chdir(proj)
    cfg = ck.TrainConfig(
        model=f"{proj}/mine.py:Net",
        out=f"{proj}/runs/a",
        epochs=1,
        progress=False,
        tta="none",
        device="cpu",
        precision="fp32",
        batch_size=100,
    )
    ck.fit(cfg, data=learnable_data)
    saved = json.loads((proj / "runs/a/config.json").read_text())
    assert (saved["model"], saved["out"]) == ("mine.py:Net", "runs/a")
    assert str(tmp_path) not in (proj / "runs/a/config.json").read_text()

    assert started_in(proj / "runs/a", "runs/a") == proj
    assert started_in(tmp_path / "copy", "runs/a") is None
    monkeypatch.chdir(tmp_path)  # a fresh process one folder up: evaluate, export, --verify
    model, again, _ = model_from_checkpoint("proj/runs/a/last.pt")
    assert again.model == "proj/mine.py:Net" and type(model).__name__ == "Net"
    assert "Net" in str(compare_runs("proj/runs/a"))
    assert rebase_paths(saved, tmp_path / "proj/runs/a")["model"] == f"{proj}/mine.py:Net"

    (tmp_path / "copy").mkdir()  # the run copied where nothing says where it started
    shutil.copy(proj / "runs/a/last.pt", tmp_path / "copy/last.pt")
    with pytest.raises(CifarkitError, match=r"model file not found: mine.py \(looked in /"):
        model_from_checkpoint("copy/last.pt")


def test_a_container_or_a_class_needing_arguments_is_recorded_as_not_rebuildable():
    from cifarkit.models import spec_string

    assert spec_string(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))) == "object:Sequential"
    assert spec_string(Head(5)) == "test_network_checks:Head"  # all arguments have defaults

    class NeedsWidth(nn.Module):
        def __init__(self, width):
            super().__init__()

    # as if at the top
    NeedsWidth.__module__, NeedsWidth.__qualname__ = "test_network_checks", "NeedsWidth"
    assert spec_string(NeedsWidth(3)) == "object:NeedsWidth"
