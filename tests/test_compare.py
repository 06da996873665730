"""Comparing the versions of a network: `compare_runs` / `python -m cifarkit runs` read run folders
back."""

import json
import os

import pytest
from torch import nn

import cifarkit as ck
from cifarkit.cli import main


def tiny_run(tmp_path, name, learnable_data, **kw):
    cfg = ck.TrainConfig(
        epochs=2,
        batch_size=50,
        eval_batch_size=50,
        device="cpu",
        precision="fp32",
        progress=False,
        lookahead=False,
        tta="flip",
        out=str(tmp_path / name),
        **kw,
    )
    return ck.fit(cfg, data=learnable_data)


@pytest.mark.slow  # seconds of real training: the full suite runs it, the inner loop skips it
def test_two_versions_side_by_side_with_their_curves(tmp_path, learnable_data, capsys):
    tiny_run(tmp_path, "v1", learnable_data)
    tiny_run(tmp_path, "v2", learnable_data, lr=0.1, limit_test=50)
    # a notebook class: not rebuildable
    Local = type("Local", (nn.Sequential,), {"__module__": "__main__"})
    ck.fit(
        ck.TrainConfig(
            epochs=1,
            batch_size=50,
            device="cpu",
            precision="fp32",
            progress=False,
            tta="none",
            out=str(tmp_path / "v3"),
        ),
        data=learnable_data,
        model=Local(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    )
    table = ck.compare_runs(tmp_path / "v1", tmp_path / "v2", tmp_path / "v3")
    v1, v2, v3 = table
    results = json.loads((tmp_path / "v1" / "results.json").read_text())
    assert (
        v1["network"] == "seed"
        and v1["params"] == "467,098"
        and v1["RF"] == 84
        and v1["epochs"] == "2/2"
    )
    assert v1["single view"] == f"{results['single_view_accuracy']:.2f}%" and v1["TTA"].endswith(
        "%"
    )
    # 100 and 50 test images: the accuracy rule decides nothing
    assert v1["rules"] == v2["rules"] == "PPPPP?"
    assert (
        v3["network"] == "object:Local"
        and v3["RF"] == "?"
        and v3["rules"] == "?"
        and v3["TTA"] == "-"
    )
    text = str(table)
    assert (
        text.splitlines()[0].split()[:3] == ["run", "network", "params"]
        and len(text.splitlines()) == 4
    )
    fig = table.plot(path=tmp_path / "runs.png")
    assert len(fig.axes[0].get_lines()) == 3 and (tmp_path / "runs.png").stat().st_size > 0

    code = main(["runs", str(tmp_path / "v1"), str(tmp_path / "v2")])
    out = capsys.readouterr().out
    assert code == 0 and "v1" in out and "v2" in out and "P pass, F fail" in out


def test_a_folder_that_holds_no_run_is_one_line(tmp_path, capsys):
    code = main(["runs", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not a run folder" in err


def test_an_accuracy_on_a_test_subset_decides_nothing():
    net = ck.build_model("seed")
    full = {c.rule: c for c in ck.check_rules(net, accuracy=84.2, test_images=10_000)}[
        "test accuracy >= 80%"
    ]
    part = {c.rule: c for c in ck.check_rules(net, accuracy=84.2, test_images=500)}[
        "test accuracy >= 80%"
    ]
    assert full.passed is True and full.value == "84.20%"
    assert (
        part.passed is None
        and part.value
        == "UNKNOWN (84.20% on 500 of the 10,000 test images: evaluate on all of them to decide)"
    )


def test_the_plot_goes_to_a_regular_file_exactly_where_it_says(tmp_path, learnable_data, capsys):
    tiny_run(tmp_path, "v1", learnable_data)
    code = main(["runs", str(tmp_path / "v1"), "--plot", str(tmp_path / "exp" / "cmp")])
    out = capsys.readouterr().out
    assert code == 0 and f"plot: {tmp_path / 'exp' / 'cmp'}" in out
    # exactly the named file, PNG bytes, no suffix added
    assert (tmp_path / "exp" / "cmp").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "exp" / "cmp.png").exists()
    before = os.stat("/dev/null")
    code = main(["runs", str(tmp_path / "v1"), "--plot", "/dev/null"])
    err = capsys.readouterr().err
    assert code != 0 and "/dev/null is not a regular file" in err and err.count("\n") == 1
    assert not os.path.exists("/dev/null.png") and os.stat("/dev/null").st_rdev == before.st_rdev
