"""Networks written in idioms plain PyTorch allows (issue 32): lazy modules, a .view that needs
NCHW, an auxiliary head returned in training mode (tuple or dict) with a loss_fn, and a bug in the
student's own line. Each trains, resumes, evaluates, exports and predicts, or gets one line that
belongs to the network.
"""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import cifarkit.training.trainer as trainer_mod
from cifarkit.base import CifarkitError
from cifarkit.cli import main
from cifarkit.config import TrainConfig
from cifarkit.models import build_model, count_parameters
from cifarkit.models.check import NetworkError
from cifarkit.training.trainer import fit

from conftest import interrupt_in_epoch_2

NETS = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class LazyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.LazyConv2d(16, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(),
                               nn.MaxPool2d(2), nn.LazyConv2d(32, 3, padding=1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(10))

    def forward(self, x):
        return self.f(x)


class AuxNet(nn.Module):
    def __init__(self, as_dict=False):
        super().__init__()
        self.as_dict = as_dict
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.aux = nn.Linear(16 * 8 * 8, 10)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))                                         # (N, 16, 32, 32)
        a = self.aux(F.adaptive_avg_pool2d(x, 8).view(x.size(0), -1))  # .view: NCHW-contiguous only
        out = self.fc(F.relu(self.c2(x)).mean((2, 3)))                 # (N, 10)
        if not self.training:
            return out
        return {"logits": out, "aux": a} if self.as_dict else (out, a)


def aux_loss(out, y):
    main, aux = out
    return F.cross_entropy(main, y) + 0.3 * F.cross_entropy(aux, y)


class Buggy(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.c(x).mean((2, 3))
        return self.fc(x)  # the bug: 8 features into a 16-input layer
"""


@pytest.fixture(autouse=True)
def no_data_default(monkeypatch):
    """--data defaults to "not given" (a CIFARKIT_DATA of the machine would choose other images on
    resume)."""
    monkeypatch.delenv("CIFARKIT_DATA", raising=False)


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "student_nets.py"
    path.write_text(NETS)
    return path


def cfg_for(tmp_path, **kw):
    base = dict(
        epochs=2,
        batch_size=50,
        lr=0.05,
        progress=False,
        out=str(tmp_path / "run"),
        eval_batch_size=50,
    )
    return TrainConfig(**{**base, **kw})


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_lazy_modules_are_materialised_without_touching_the_random_stream(nets):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    net = build_model(f"{nets}:LazyNet")
    # the run draws the same numbers as with any other network
    assert torch.equal(torch.rand(3), expected)
    assert count_parameters(net) == 16 * 3 * 9 + 16 + 32 + 32 * 16 * 9 + 32 + 32 * 10 + 10
    torch.manual_seed(0)
    again = build_model(f"{nets}:LazyNet")
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values())
    )


def test_a_lazy_network_trains_resumes_evaluates_exports_and_predicts(
    nets, tree, tmp_path, capsys, monkeypatch
):
    run_dir = tmp_path / "run"
    train = [
        "train",
        "--model",
        f"{nets}:LazyNet",
        "--data",
        tree,
        "--out",
        run_dir,
        "--epochs",
        "2",
        "--batch-size",
        "10",
        "--no-progress",
        "--precision",
        "fp32",
    ]
    real = interrupt_in_epoch_2(monkeypatch)
    assert run(train, capsys)[0] == 130
    monkeypatch.setattr(trainer_mod, "train_one_epoch", real)
    code, out, err = run(["train", "--resume", run_dir / "last.pt", "--no-progress"], capsys)
    assert code == 0 and "resuming" in out, err
    code, out, err = run(["evaluate", "--checkpoint", run_dir / "last.pt", "--data", tree], capsys)
    assert code == 0 and "Accuracy:" in out, err
    assert (
        run(["export", "--checkpoint", run_dir / "best.pt", "--out", tmp_path / "slim.pt"], capsys)[
            0
        ]
        == 0
    )
    image = next((tree / "test" / "cat").iterdir())
    fresh = subprocess.run(
        [
            sys.executable,
            "-m",
            "cifarkit",
            "predict",
            "--checkpoint",
            str(tmp_path / "slim.pt"),
            # a fresh process rebuilds it from the file
            str(image),
        ],
        capture_output=True,
        text=True,
    )
    assert fresh.returncode == 0 and f"{image}: " in fresh.stdout, fresh.stderr


def test_lazy_network_objects_train_and_load_in_python(nets, learnable_data, tmp_path):
    from cifarkit.models.registry import load_attr

    LazyNet = load_attr(f"{nets}:LazyNet")
    first = fit(cfg_for(tmp_path), data=learnable_data, model=LazyNet(), resume="auto")
    again = fit(cfg_for(tmp_path), data=learnable_data, model=LazyNet(), resume="auto")
    assert again.loaded and again.final == first.final


def test_an_auxiliary_head_without_a_loss_fn_is_one_line_about_the_tuple(
    nets, learnable_data, tmp_path, capsys
):
    with pytest.raises(CifarkitError) as e:
        fit(cfg_for(tmp_path, model=f"{nets}:AuxNet"), data=learnable_data)
    msg = str(e.value)
    assert (
        "\n" not in msg
        and "returned a tuple of 2: tensor (50, 10), tensor (50, 10) in training mode" in msg
    )
    assert "loss_fn" in msg and "view" not in msg, msg
    out = capsys.readouterr().out
    assert "layout: NCHW: your network fails in channels_last (RuntimeError: view size" in out, out
    assert "student_nets.py, line " in out  # the network's own line, not a torch frame


@pytest.mark.parametrize("as_dict", [False, True])
def test_an_auxiliary_head_trains_with_a_loss_fn_and_evaluates_on_eval_mode_logits(
    nets, learnable_data, tmp_path, as_dict
):
    from cifarkit.models.registry import load_attr

    def loss_fn(out, y):
        main, aux = (out["logits"], out["aux"]) if as_dict else out
        return F.cross_entropy(main, y) + 0.3 * F.cross_entropy(aux, y)

    result = fit(
        cfg_for(tmp_path, model=f"{nets}:AuxNet(as_dict={as_dict})", epochs=3, lr=0.2),
        data=learnable_data,
        loss_fn=loss_fn,
    )
    h = result.history
    assert h[-1]["train_loss"] < h[0]["train_loss"] and result.final["layout"] == "NCHW"
    assert (
        result.final["single_view_total"]
        if "single_view_total" in result.final
        else result.final["test_total"]
    )
    _, labels, probs = result.test_predictions()
    assert probs.shape == (len(labels), 10)
    assert load_attr(f"{nets}:aux_loss") is not None


def test_the_cli_takes_a_loss_fn(nets, tree, tmp_path, capsys):
    code, out, err = run(
        [
            "train",
            "--model",
            f"{nets}:AuxNet",
            "--loss-fn",
            f"{nets}:aux_loss",
            "--data",
            tree,
            "--out",
            tmp_path / "run",
            "--epochs",
            "1",
            "--batch-size",
            "10",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(
        [
            "train",
            "--model",
            f"{nets}:AuxNet",
            "--loss-fn",
            "aux_loss",
            "--data",
            tree,
            "--out",
            tmp_path / "other",
            "--epochs",
            "1",
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "import path" in err


def test_a_bug_in_the_forward_names_the_students_line(nets, learnable_data, tmp_path, capsys):
    with pytest.raises(CifarkitError) as e:
        fit(cfg_for(tmp_path, model=f"{nets}:Buggy"), data=learnable_data)
    msg = str(e.value)
    assert "\n" not in msg and "mat1 and mat2 shapes cannot be multiplied" in msg
    line = (
        NETS.splitlines().index(
            "        return self.fc(x)  # the bug: 8 features into a 16-input layer"
        )
        + 1
    )
    assert f"student_nets.py, line {line}: return self.fc(x)" in msg, msg
    assert not (tmp_path / "run" / "last.pt").exists()


def test_auto_precision_is_chosen_among_those_the_network_runs_in(
    learnable_data, tmp_path, capsys, monkeypatch
):
    """A network that gives non-finite output under bf16 autocast (but not in fp32) trains in fp32,
    and the precision line says why; asked for explicitly, bf16 is honoured."""
    from torch import nn

    import cifarkit.runtime as runtime

    class BreaksInBf16(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            y = self.fc(self.c(x).mean((2, 3)))
            return y * float("inf") if torch.is_autocast_enabled("cpu") and self.training else y

    real = runtime.choose_precision
    monkeypatch.setattr(
        runtime,
        "choose_precision",
        lambda p, d, kept=None: (torch.bfloat16, "bf16: native") if p == "auto" else real(p, d),
    )
    result = fit(  # the CPU: the network checks CPU autocast
        cfg_for(tmp_path, epochs=1, precision="auto", device="cpu"),
        data=learnable_data,
        model=BreaksInBf16,
    )
    out = capsys.readouterr().out
    assert "precision: fp32: your network fails in bf16: the network fails in both layouts:" in out
    assert "FloatingPointError: its output is not finite" in out
    assert result.final["precision"] == "fp32" and result.precision == "fp32"
    assert result.runtime.precision == "fp32"
    with pytest.raises(NetworkError, match="fails in every precision and layout tried: bf16"):
        fit(  # asked for explicitly, bf16 is the one candidate: its failure is the error
            cfg_for(tmp_path / "b", epochs=1, precision="bf16", device="cpu"),
            data=learnable_data,
            model=BreaksInBf16,
        )


def test_a_constructor_that_fails_names_the_students_line(tmp_path):
    (tmp_path / "bad_init.py").write_text(
        "import torch.nn as nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.c = nn.Conv2d(3, 8, 3, groups=5)\n"
    )
    with pytest.raises(CifarkitError) as e:
        build_model(f"{tmp_path / 'bad_init.py'}:Net")
    assert (
        "building the network" in str(e.value)
        and "(bad_init.py, line 6: self.c = nn.Conv2d(3, 8, 3, groups=5))" in str(e.value)
        and "\n" not in str(e.value)
    )
