"""Bring your own network: objects, factories, registry names and import paths train, evaluate,
export, resume and predict, in this process and in a fresh one."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import cifarkit as ck
from cifarkit.base import ConfigError
from cifarkit.cli import main

STUDENT_NET = textwrap.dedent('''
    import torch.nn.functional as F
    from torch import nn


    class Net(nn.Module):
        """Written the way a student writes one: functional pools, no dropout argument, log_softmax
        output."""

        def __init__(self, width=8):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, padding=1)
            self.conv2 = nn.Conv2d(width, width, 3, padding=2, dilation=2)
            self.fc = nn.Linear(width, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.relu(self.conv2(x))
            x = F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)
            return F.log_softmax(self.fc(x), dim=1)
''')


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


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
        lookahead=False,
    )
    return ck.TrainConfig(**{**base, **kw})


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def net_file(tmp_path):
    f = tmp_path / "student" / "my_net.py"
    f.parent.mkdir()
    f.write_text(STUDENT_NET)
    return f


def test_fit_trains_an_object_in_place_and_says_how_to_rebuild(tmp_path, learnable_data, capsys):
    net = TinyNet()
    before = net.conv.weight.detach().clone()
    r = ck.fit(cfg_for(tmp_path, device="cpu"), data=learnable_data, model=net)  # compared on CPU
    # the student's object was trained
    assert r.model is net and not torch.equal(before, net.conv.weight)
    assert "a fresh process" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert saved == "test_byo_network:TinyNet"  # importable class: recorded as an import path
    # The config stays plain data: it names the network, the object travels beside it.
    assert "test_byo_network:TinyNet" in str(r.config) and len(str(r.config)) < 3000
    with pytest.raises(ck.CifarkitError, match=r"fit\(cfg, model=net\)") as e:
        ck.TrainConfig(model=TinyNet())
    assert "\n" not in str(e.value)


def test_the_notebooks_network_may_be_a_class_an_object_or_a_partial(
    tmp_path, learnable_data, capsys
):
    """NETWORK = StudentNet(), as students write it: every cell builds a fresh copy, so neither the
    summary, the step by hand, fit nor the LR range test trains the object, and each starts from the
    weights it had when it was set; the name stays the class's."""
    import functools

    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    maker = ck.own_network(net)
    assert maker.__name__ == "TinyNet" and ck.own_network(maker) is maker  # a cell run twice
    a, b = ck.build_model(maker), ck.build_model(maker)
    assert a is not b and a is not net and torch.equal(a.conv.weight, net.conv.weight)
    net.conv.weight.data.zero_()  # an edit after NETWORK was set does not reach the copies
    assert not torch.equal(ck.build_model(maker).conv.weight, net.conv.weight)
    net.load_state_dict(before)
    cfg = cfg_for(tmp_path, device="cpu")
    ck.lr_find(cfg, learnable_data, model=maker, num_iter=3, keep=False)
    r = ck.fit(cfg, data=learnable_data, model=maker)
    assert r.network == "TinyNet" and isinstance(r.model, TinyNet) and r.model is not net
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # never trained
    assert not torch.equal(r.model.conv.weight, before["conv.weight"])  # its copy was
    assert "seeded_init false" in capsys.readouterr().out  # the object's weights: not cfg.seed's
    assert ck.fit(cfg, data=learnable_data, model=ck.own_network(TinyNet()), resume="auto").loaded

    # a class stays the class (built under the seed); a partial and a lambda get a usable name
    assert ck.own_network(TinyNet) is TinyNet
    wide = ck.own_network(functools.partial(TinyNet))
    assert wide.__name__ == "TinyNet" and isinstance(wide(), TinyNet)
    assert ck.models.spec_string(wide) == "object:TinyNet"  # its arguments are in no import path
    # plain keywords are recorded (--verify calls a notebook's class with them again); others not
    spec = ck.models.spec_string
    assert spec(ck.own_network(functools.partial(TinyNet, width=6, act="relu"))) == (
        "object:TinyNet(width=6, act='relu')"
    )
    assert spec(ck.own_network(functools.partial(TinyNet, act=nn.ReLU))) == "object:TinyNet"
    assert ck.own_network(lambda: TinyNet()).__name__ == "network"
    for bad in ("seed", 3, [TinyNet]):
        with pytest.raises(ConfigError, match=r"NETWORK = StudentNet\b") as e:
            ck.own_network(bad)
        assert "\n" not in str(e.value)


@pytest.mark.slow  # a fresh Python process
def test_a_notebook_class_is_recorded_as_an_object_and_refused_in_a_fresh_process(
    tmp_path, learnable_data, capsys
):
    Local = type("Local", (TinyNet,), {"__module__": "__main__"})
    ck.fit(cfg_for(tmp_path), data=learnable_data, model=Local)  # a zero-argument factory
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == "object:Local"
    code, _, err = run(
        ["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", "unused"], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "import path" in err
    # Given the network again, the same checkpoint evaluates and resumes.
    model, cfg, _ = ck.model_from_checkpoint(tmp_path / "run" / "last.pt", model=Local())
    assert isinstance(model, Local)


def test_register_twice_replaces_and_constructors_need_no_dropout(tmp_path, learnable_data):
    ck.register("peer", TinyNet)
    ck.register("peer")(TinyNet)  # "run all" a second time: no error
    r = ck.fit(cfg_for(tmp_path, model="peer"), data=learnable_data)
    assert isinstance(r.model, TinyNet)
    with pytest.raises(ConfigError, match="takes no dropout argument"):
        ck.build_model("peer", dropout=0.1)


@pytest.mark.slow  # seconds of real training: the full suite runs it, the inner loop skips it
def test_import_path_trains_evaluates_exports_summarises_and_resumes(
    tmp_path, net_file, tree, capsys
):
    spec = f"{net_file}:Net(width=6)"
    out = tmp_path / "run"
    common = [
        "--data",
        str(tree),
        "--no-progress",
        "--precision",
        "fp32",
        "--batch-size",
        "10",
        "--tta",
        "none",
        "--no-lookahead",
    ]
    code, stdout, err = run(
        ["train", "--model", spec, "--epochs", "2", "--out", str(out), *common], capsys
    )
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["model"] == spec
    res = json.loads((out / "results.json").read_text())
    line = f"Accuracy: {res['single_view_correct']}/20"
    code, stdout, _ = run(
        ["evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(tree)], capsys
    )
    assert code == 0 and line in stdout
    assert (
        run(
            ["export", "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "slim.pt")],
            capsys,
        )[0]
        == 0
    )
    code, stdout, _ = run(["summary", "--checkpoint", str(tmp_path / "slim.pt")], capsys)
    assert code == 0 and "dilated conv" in stdout and "conv2" in stdout
    # A fresh process rebuilds the network from the recorded import path.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cifarkit",
            "evaluate",
            "--checkpoint",
            str(tmp_path / "slim.pt"),
            "--data",
            str(tree),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and line in proc.stdout, proc.stderr
    # --resume with another network is refused, not ignored.
    code, _, err = run(
        ["train", "--resume", str(out / "last.pt"), "--model", "compact", *common], capsys
    )
    assert code == 2 and "refusing to change model" in err and err.count("\n") == 1


def test_bad_import_paths_are_one_line(tmp_path, net_file, capsys):
    for spec, needle in (
        (f"{tmp_path}/nope.py:Net", "model file not found"),
        (f"{net_file}:Nope", "has no 'Nope'"),
        ("no_such_module_xyz:Net", "cannot import module"),
        (f"{net_file}:Net(width=)", "bad model"),
    ):
        code, _, err = run(["summary", "--model", spec], capsys)
        assert code == 2 and needle in err and err.count("\n") == 1, err


def test_predict_any_image_top3_and_one_line_errors(tmp_path, tree, capsys):
    run(
        ["train", "--dry-run", "--data", str(tree), "--out", str(tmp_path / "r"), "--no-progress"],
        capsys,
    )
    big = tmp_path / "big.png"
    Image.new("RGBA", (100, 60), (200, 30, 30, 255)).save(big)
    small = tmp_path / "small.jpg"
    Image.new("RGB", (32, 32), (20, 90, 200)).save(small)
    code, out, err = run(
        ["predict", "--checkpoint", str(tmp_path / "r" / "last.pt"), str(big), str(small)], capsys
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert (
        len(lines) == 2 and lines[0].count("%") == 3 and "resized from 100x60 to 32x32" in lines[0]
    )
    assert "converted from RGBA" in lines[0] and "resized" not in lines[1]
    p = ck.predict_image(ck.model_from_checkpoint(tmp_path / "r" / "last.pt")[0], small)
    assert (
        len(p.top) == 3
        and abs(sum(v for _, v in p.top)) <= 1.0 + 1e-6
        and p.top[0][1] >= p.top[1][1]
    )
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    for path, needle in ((tmp_path / "missing.png", "image not found"), (bad, "cannot read image")):
        code, _, err = run(
            ["predict", "--checkpoint", str(tmp_path / "r" / "last.pt"), str(path)], capsys
        )
        assert code == 2 and needle in err and err.count("\n") == 1, err
