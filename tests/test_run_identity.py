"""A run belongs to the code that made it, and nothing in a run folder is lost: resume="auto",
--resume and the same command refuse, in one line and touching nothing, a network whose code
changed, a damaged folder (best.pt or history without a readable last.pt) and unreadable results; a
resumed run keeps the layout and precision it started with."""

import pytest
import torch

import cifarkit.hardware as hardware
from cifarkit.base import CifarkitError
from cifarkit.cli import main
from cifarkit.config import TrainConfig
from cifarkit.models.identity import identity_changes, network_identity
from cifarkit.runfolder.checkpoint import load_checkpoint
from cifarkit.runfolder.signals import RunStopped
from cifarkit.training.trainer import fit

from conftest import interrupt_in_epoch_2, kernel_cell

NET = '''
import torch.nn as nn
import torch.nn.functional as F

class Net(nn.Module):
    """A student's network."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.bn(F.relu(self.c1(x)))
        x = F.max_pool2d(x, 2)
        return self.fc(x.mean((2, 3)))
'''
# same name, same shapes
OTHER_POOL = NET.replace("F.max_pool2d(x, 2)", "F.avg_pool2d(x, 2)")
OTHER_ACT = NET.replace("F.relu(self.c1(x))", "F.gelu(self.c1(x))")
COMMENTED = NET.replace(
    "        x = F.max_pool2d(x, 2)", "        # pool once\n\n        x = F.max_pool2d( x, 2 )"
).replace('"""A student\'s network."""', '"""Another docstring."""')
# weights of another shape
WIDER = NET.replace("nn.Conv2d(3, 8, 3, padding=1)", "nn.Conv2d(3, 8, 5, padding=2)")


def cell(source: str):
    """The class `Net` as a notebook cell defines it (`conftest.kernel_cell`)."""
    return kernel_cell(source)["Net"]


def cfg_for(tmp_path, **kw):
    base = dict(
        epochs=1,
        batch_size=50,
        lr=0.05,
        progress=False,
        out=str(tmp_path / "run"),
        precision="fp32",
        eval_batch_size=50,
        tta="none",
    )
    return TrainConfig(**{**base, **kw})


def files(run) -> dict:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def one_line(e, *needles) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_what_counts_as_a_change():
    base = network_identity(cell(NET)())
    assert identity_changes(base, network_identity(cell(NET)())) == []
    # comments, blank lines, docstrings
    assert identity_changes(base, network_identity(cell(COMMENTED)())) == []
    assert identity_changes(base, network_identity(cell(OTHER_POOL)())) == ["forward", "code"]
    assert identity_changes(base, network_identity(cell(OTHER_ACT)())) == ["forward", "code"]
    assert identity_changes(base, network_identity(cell(WIDER)()))[:2] == ["parameters", "layers"]
    dropout = cell(
        NET.replace(
            "self.fc = nn.Linear(8, 10)",
            "self.fc = nn.Sequential(nn.Dropout(0.1), nn.Linear(8, 10))",
        )
    )
    assert "layers" in identity_changes(
        network_identity(dropout()),
        network_identity(
            cell(
                NET.replace(
                    "self.fc = nn.Linear(8, 10)",
                    "self.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(8, 10))",
                )
            )()
        ),
    )
    assert identity_changes(None, base) == []  # an older cifarkit's run records nothing to compare


def test_a_helper_function_the_forward_calls_is_part_of_the_code():
    helper = """
import torch.nn as nn
import torch.nn.functional as F

def act(x):
    return F.dropout(F.relu(x), 0.1, training=False)

def pool(x):
    return F.max_pool2d(act(x), 2)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(pool(self.c1(x)).mean((2, 3)))
"""
    base = network_identity(cell(helper)())
    # an edit two calls down that changes no op and no shape (eval-mode dropout): only the code
    # shows it
    assert identity_changes(base, network_identity(cell(helper.replace("0.1", "0.3"))())) == [
        "code"
    ]
    assert (
        identity_changes(
            base,
            network_identity(
                cell(
                    helper.replace("    return F.max_pool2d", "    # pool\n    return F.max_pool2d")
                )()
            ),
        )
        == []
    )


def test_identity_leaves_the_network_and_the_random_stream_alone():
    net = cell(NET)()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    network_identity(net)
    assert torch.equal(torch.rand(3), expected) and net.training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_an_edited_network_is_never_loaded_as_the_finished_run(tmp_path, learnable_data):
    first = fit(cfg_for(tmp_path), data=learnable_data, model=cell(NET), resume="auto")
    run = tmp_path / "run"
    assert not first.loaded and load_checkpoint(run / "last.pt")["network"]["forward"]
    before = files(run)
    for edited, what in (
        (OTHER_POOL, "forward and code"),
        (OTHER_ACT, "forward and code"),
        (WIDER, "parameter shapes"),
    ):
        with pytest.raises(CifarkitError) as e:
            fit(cfg_for(tmp_path), data=learnable_data, model=cell(edited), resume="auto")
        one_line(e, f"the network's {what}", "changed since", "overwrite=True once", "cfg.out")
        assert files(run) == before  # nothing written, nothing deleted
    # comments only
    again = fit(cfg_for(tmp_path), data=learnable_data, model=cell(COMMENTED), resume="auto")
    assert again.loaded and again.final == first.final
    assert files(run) == before


def test_an_edited_network_never_resumes_an_unfinished_run(tmp_path, learnable_data):
    fit(cfg_for(tmp_path, epochs=2), data=learnable_data, model=cell(NET), resume="auto")
    run = tmp_path / "run"
    (run / "results.json").unlink()  # as if stopped after its last checkpoint
    before = files(run)
    with pytest.raises(CifarkitError) as e:
        fit(cfg_for(tmp_path, epochs=2), data=learnable_data, model=cell(OTHER_POOL), resume="auto")
    one_line(e, "the network's forward and code changed")
    with pytest.raises(CifarkitError) as e:  # resume=PATH compares too
        fit(
            cfg_for(tmp_path, epochs=2),
            data=learnable_data,
            model=cell(OTHER_POOL),
            resume=run / "last.pt",
        )
    one_line(e, "the network's forward and code changed")
    assert files(run) == before
    retrained = fit(
        cfg_for(tmp_path, epochs=2),
        data=learnable_data,
        model=cell(OTHER_POOL),
        resume="auto",
        overwrite=True,
    )
    assert not retrained.loaded and retrained.final


def test_the_cli_refuses_to_resume_an_edited_network_file(tmp_path, tree, capsys):
    net = tmp_path / "net.py"
    net.write_text(NET)
    run = tmp_path / "run"
    args = [
        "train",
        "--model",
        f"{net}:Net",
        "--data",
        str(tree),
        "--out",
        str(run),
        "--epochs",
        "2",
        "--batch-size",
        "10",
        "--no-progress",
        "--precision",
        "fp32",
        "--tta",
        "none",
    ]
    assert main(args) == 0
    (run / "results.json").unlink()
    net.write_text(OTHER_ACT)
    before = files(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run / "last.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "the network's forward and code changed" in err
        and "--overwrite" in err
    ), err
    assert files(run) == before


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_folder_is_refused_not_started_over(
    tmp_path, learnable_data, tree, capsys, damage
):
    fit(cfg_for(tmp_path, epochs=2), data=learnable_data, resume="auto")
    run = tmp_path / "run"
    (run / "results.json").unlink()
    last = run / "last.pt"
    if damage == "deleted":
        last.unlink()
    else:  # a half-synced Drive file
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = files(run)
    for call in (dict(resume="auto"), dict()):  # the notebook's cell, and fit without resume
        with pytest.raises(CifarkitError) as e:
            fit(cfg_for(tmp_path, epochs=2), data=learnable_data, **call)
        one_line(
            e,
            "last.pt",
            "best.pt (after epoch",
            "history.csv",
            "nothing was changed",
            "overwrite=True",
            "resume=",
        )
        assert files(run) == before
    capsys.readouterr()
    assert (
        main(["train", "--data", str(tree), "--out", str(run), "--epochs", "2", "--no-progress"])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "best.pt" in err and "--overwrite" in err and "--resume" in err
    ), err
    assert files(run) == before
    # best.pt is a whole checkpoint: the run can go on from it, as the line says
    resumed = fit(cfg_for(tmp_path, epochs=2), data=learnable_data, resume=run / "best.pt")
    assert resumed.final and len(resumed.history) == 2


def test_unreadable_results_of_a_finished_run_are_one_line(tmp_path, learnable_data):
    fit(cfg_for(tmp_path), data=learnable_data, resume="auto")
    run = tmp_path / "run"
    for text in ('{"single_view_accuracy": 5', "", "[1, 2]"):
        (run / "results.json").write_text(text)
        before = files(run)
        with pytest.raises(CifarkitError) as e:
            fit(cfg_for(tmp_path), data=learnable_data, resume="auto")
        one_line(e, "results.json cannot be read", "overwrite=True")
        assert files(run) == before


def test_a_resumed_run_keeps_the_layout_it_started_with(tmp_path, learnable_data, monkeypatch):
    import cifarkit.training.trainer as trainer_mod

    def cfg(name):  # the CPU: its layout is measured (on CUDA it follows a rule)
        return cfg_for(tmp_path / name, epochs=2, channels_last="auto", dropout=0.0, device="cpu")

    # nothing measured earlier
    monkeypatch.setenv("CIFARKIT_LAYOUT_CACHE", str(tmp_path / "layout.json"))
    # NHWC measured faster
    monkeypatch.setattr(hardware, "_time_layouts", lambda *a: (100.0, 200.0))
    straight = fit(cfg("straight"), data=learnable_data)
    real = interrupt_in_epoch_2(monkeypatch)
    with pytest.raises(RunStopped) as stopped:
        fit(cfg("cut"), data=learnable_data)
    assert stopped.value.result.interrupted
    choices = load_checkpoint(tmp_path / "cut" / "run" / "last.pt")["choices"]
    assert {k: choices[k] for k in ("precision", "channels_last", "device")} == {
        "precision": "fp32",
        "channels_last": True,
        "device": "cpu",
    }
    monkeypatch.setattr(trainer_mod, "train_one_epoch", real)
    # a new machine, say,
    monkeypatch.setenv("CIFARKIT_LAYOUT_CACHE", str(tmp_path / "fresh-layout.json"))
    # where NCHW measures faster
    monkeypatch.setattr(hardware, "_time_layouts", lambda *a: (200.0, 100.0))
    resumed = fit(cfg("cut"), data=learnable_data, resume="auto")
    assert straight.final["layout"] == resumed.final["layout"] == "channels_last"
    strip = lambda h: [{k: v for k, v in r.items() if "second" not in k} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    # a new run measures again
    assert fit(cfg("fresh"), data=learnable_data).final["layout"] == "NCHW"


def test_export_to_a_long_file_name_and_onto_a_folder(tmp_path, learnable_data, capsys):
    fit(cfg_for(tmp_path), data=learnable_data)
    last = str(tmp_path / "run" / "last.pt")
    # 249 bytes: a valid name, 14 bytes short of the limit with a temp suffix
    name = "m" * 246 + ".pt"
    assert main(["export", "--checkpoint", last, "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / name).is_file() and not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "folder").mkdir()
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        assert (
            main(["export", "--checkpoint", last, "--out", str(tmp_path / "folder"), *extra]) == 2
        )
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a folder" in err and "--overwrite" not in err, err


def test_a_record_of_another_identity_version_is_not_compared(tmp_path, learnable_data, capsys):
    import cifarkit.models.identity as identity

    run = tmp_path / "run"
    fit(cfg_for(tmp_path), data=learnable_data, model=cell(NET), resume="auto")
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["network"]["version"] == identity.VERSION
    # as an older cifarkit wrote
    old = {**ckpt["network"], "version": identity.VERSION - 1, "forward": "0" * 16}
    # a change there may be cifarkit's own
    assert identity_changes(old, network_identity(cell(NET)())) == []
    from cifarkit.runfolder.checkpoint import save_checkpoint

    save_checkpoint(
        run / "last.pt",
        {k: v for k, v in {**ckpt, "network": old}.items() if k not in ("format", "version")},
    )
    capsys.readouterr()
    assert fit(cfg_for(tmp_path), data=learnable_data, model=cell(NET), resume="auto").loaded
    assert (
        "cannot check that the network passed now is the one that trained it"
        in capsys.readouterr().out
    )


def _a_forward(self, x: "Tensor") -> "Tensor":  # noqa: F821 - read as source only
    """Written with what differs between Python versions' syntax trees: annotations, f-strings,
    lambdas with every kind of argument, starred calls, slices, with and try."""
    x = F.max_pool2d(self.conv1(x), 2)  # noqa: F821
    y: int = 3
    z = [a for a in range(3) if a] + list(*x, **{})
    lam = lambda q=1, *r, k=2, **kw: q  # noqa: E731
    try:
        pass
    except (ValueError, TypeError) as e:
        raise RuntimeError(f"bad {x!r:>10} {y} {z} {lam}") from e
    with open("f") as f, open("g"):
        del f
    if x is None and not y:
        return F.log_softmax(self.fc(x.view(x.size(0), -1)), dim=1)  # noqa: F821
    return x[1:2, ..., None] @ x


def test_the_code_reads_the_same_on_every_python():
    """A run trained on Colab (Python 3.13) continues or loads on Python 3.11 and back: the code's
    record does not depend on the Python version (ast.dump did: 3.13 leaves out empty fields). The
    expected value was computed on Python 3.11 and 3.13 alike, and CI runs this on both."""
    import hashlib

    from cifarkit.models.identity import source_fingerprint

    text = source_fingerprint(_a_forward)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "bd1efd5c8c067eab", text


def test_a_run_made_under_another_torch_release_compares_code_and_shapes(
    tmp_path, learnable_data, capsys
):
    """torch's names for layers (a BatchNorm's repr gained bias=True in 2.14) and operations change
    between releases: a run recorded under another release is loaded, saying what was compared,
    and an edit of the code is still refused."""
    from cifarkit.runfolder.checkpoint import save_checkpoint

    run = tmp_path / "run"
    fit(cfg_for(tmp_path), data=learnable_data, model=cell(NET), resume="auto")
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["network"]["torch"] == ".".join(torch.__version__.split(".")[:2])
    older = {**ckpt["network"], "torch": "1.0", "layers": "0" * 16, "forward": "1" * 16}
    save_checkpoint(
        run / "last.pt",
        {k: v for k, v in {**ckpt, "network": older}.items() if k not in ("format", "version")},
    )
    capsys.readouterr()
    assert fit(cfg_for(tmp_path), data=learnable_data, model=cell(NET), resume="auto").loaded
    out = capsys.readouterr().out
    assert "trained under torch 1.0" in out and "its layers and forward not" in out
    with pytest.raises(CifarkitError) as e:
        fit(cfg_for(tmp_path), data=learnable_data, model=cell(OTHER_POOL), resume="auto")
    one_line(e, "code changed")
