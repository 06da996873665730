"""The command line: summary, a dry run, evaluate, and one-line errors for every bad option or
input."""

import json
import os
import re
import subprocess
import sys

import pytest

from cifarkit.cli import main


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits on bad options
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_summary_prints_table_rf_and_rules(capsys):
    code, out, _ = run(["summary", "--model", "seed"], capsys)
    assert code == 0
    assert "Total params: 467,098" in out and "Estimated Total Size (MB): 5.11" in out
    assert "c4.0.0          Conv2d               3  1  2  2     8   68" in out
    assert "[PASS] receptive field > 44       84 px" in out
    assert "[FAIL]" not in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
        (["train", "--batch-size", "x"], "argument --batch-size: invalid int value: 'x'"),
        (["train", "--lr", "-1"], "lr must be in (0, 3.4e38] (float32's range), got -1.0"),
        (["train", "--lr", "0"], "lr must be in (0, 3.4e38]"),
        (["train", "--model", "resnet9000"], "unknown model 'resnet9000'; known: compact, "),
        (["train", "--dropout", "1.5"], "must be in [0, 1)"),
        (["train", "--schedule", "cosine"], "invalid choice: 'cosine'"),
        (["train", "--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
        (
            ["train", "--schedule", "step"],
            "schedule 'step' needs exactly one of step_size (epochs) or milestones",
        ),
        (["train", "--transforms", "RandomRotation(degrees=)"], "bad transform"),
        (["train", "--limit-train", "5"], "must be >= 10"),
        (["predict", "--checkpoint", "x.pt"], "the following arguments are required: IMAGE"),
        (["evaluate"], "the following arguments are required: --checkpoint"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_options_get_one_line(argv, needle, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err


def test_missing_data_path_is_one_line(tmp_path, capsys):
    code, _, err = run(
        ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")], capsys
    )
    assert code == 2 and err == f"cifarkit: error: data path not found: {tmp_path / 'missing'}\n"
    assert not (tmp_path / "r" / "last.pt").exists()


def test_dry_run_then_evaluate_reproduces_the_accuracy(tree, tmp_path, capsys):
    out_dir = tmp_path / "dry"
    code, out, _ = run(
        ["train", "--dry-run", "--data", str(tree), "--out", str(out_dir), "--no-progress"], capsys
    )
    assert code == 0, out
    res = json.loads((out_dir / "results.json").read_text())
    assert res["epochs"] == 1
    code, out, _ = run(
        ["evaluate", "--checkpoint", str(out_dir / "last.pt"), "--data", str(tree)], capsys
    )
    assert code == 0
    line = (
        f"Test set: Average loss: {res['single_view_loss']:.4f}, Accuracy:"
        f" {res['single_view_correct']}/20 ({res['single_view_accuracy']:.2f}%)"
    )
    tta_line = (
        f"Final test, flip-translate TTA (6 views): Accuracy: {res['tta_correct']}/20"
        f" ({res['tta_accuracy']:.2f}%)"
    )
    assert line in out and tta_line in out and "per-class accuracy" in out and "airplane" in out

    # The slim export evaluates to the same line, is smaller, refuses to be overwritten or resumed.
    slim = tmp_path / "slim.pt"
    assert (
        run(["export", "--checkpoint", str(out_dir / "last.pt"), "--out", str(slim)], capsys)[0]
        == 0
    )
    assert slim.stat().st_size < (out_dir / "last.pt").stat().st_size
    code, out, _ = run(["evaluate", "--checkpoint", str(slim), "--data", str(tree)], capsys)
    assert code == 0 and line in out
    code, _, err = run(
        ["export", "--checkpoint", str(out_dir / "last.pt"), "--out", str(slim)], capsys
    )
    assert code == 2 and "--overwrite" in err
    nested = tmp_path / "new" / "folder" / "slim.pt"  # a folder that does not exist yet is created
    assert (
        run(["export", "--checkpoint", str(out_dir / "last.pt"), "--out", str(nested)], capsys)[0]
        == 0
    )
    assert nested.is_file()
    code, _, err = run(
        ["export", "--checkpoint", str(out_dir / "last.pt"), "--out", str(tmp_path), "--overwrite"],
        capsys,
    )
    assert code == 2 and "is a folder" in err and err.count("\n") == 1
    code, _, err = run(
        ["train", "--resume", str(slim), "--data", str(tree), "--no-progress"], capsys
    )
    assert code == 2 and "exported checkpoint" in err and err.count("\n") == 1


def test_existing_run_needs_overwrite(tree, tmp_path, capsys):
    argv = [
        "train",
        "--epochs",
        "1",
        "--data",
        str(tree),
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert run(argv, capsys)[0] == 0
    code, _, err = run(argv, capsys)
    assert code == 2 and "already holds a finished run" in err and err.count("\n") == 1
    assert run(argv + ["--overwrite"], capsys)[0] == 0


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    code, _, err = run(["evaluate", "--checkpoint", str(bad)], capsys)
    assert (
        code == 2
        and err.startswith("cifarkit: error: cannot read checkpoint")
        and err.count("\n") == 1
    )


def test_diverging_run_exits_1_with_a_hint(tree, tmp_path, capsys):
    code, _, err = run(
        [
            "train",
            "--epochs",
            "2",
            "--lr",
            "1e30",
            "--schedule",
            "constant",
            "--data",
            str(tree),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--precision",
            "fp32",
        ],
        capsys,
    )
    # the tiny data set gets its one "warning:" line about class counts
    *warnings, last = err.splitlines()
    assert (
        code == 1
        and "loss is" in last
        and "Lower --lr" in last
        and all(w.startswith("warning:") for w in warnings)
    )


@pytest.mark.slow  # seconds of real training: the full suite runs it, the inner loop skips it
def test_module_entry_point_one_line_error():
    p = subprocess.run(
        [sys.executable, "-m", "cifarkit", "train", "--epochs", "-3"],
        capture_output=True,
        text=True,
    )
    assert (
        p.returncode == 2
        and p.stderr.count("\n") == 1
        and "epochs must be" in p.stderr
        and not p.stdout
    )


def test_evaluate_on_the_validation_split_reproduces_training(tree, tmp_path, capsys):
    out_dir = tmp_path / "v"
    code, _, _ = run(
        [
            "train",
            "--epochs",
            "1",
            "--val-split",
            "10",
            "--data",
            str(tree),
            "--out",
            str(out_dir),
            "--no-progress",
            "--tta",
            "flip-translate",
        ],
        capsys,
    )
    assert code == 0
    last = json.loads((out_dir / "history.json").read_text())[-1]
    assert last["eval_total"] == 10 and last["eval_tta"] == "none"  # per-epoch rows are single view
    code, out, _ = run(
        [
            "evaluate",
            "--checkpoint",
            str(out_dir / "last.pt"),
            "--data",
            str(tree),
            "--val-split",
            "10",
        ],
        capsys,
    )
    assert (
        code == 0
        and f"Validation set: Average loss: {last['eval_loss']:.4f}, "
        f"Accuracy: {last['eval_correct']}/10"
        in out
    )


def test_dry_run_never_touches_a_finished_run(tree, tmp_path, capsys):
    argv = [
        "train",
        "--epochs",
        "2",
        "--data",
        str(tree),
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert run(argv, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    code, _, err = run(
        ["train", "--dry-run", "--data", str(tree), "--out", str(tmp_path / "r"), "--no-progress"],
        capsys,
    )
    assert code == 2 and "already holds a finished run" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()} == before
    # no --out: a temp folder
    code, out, _ = run(["train", "--dry-run", "--data", str(tree), "--no-progress"], capsys)
    assert code == 0 and "cifarkit-dry-run-" in out
    (folder,) = re.findall(r"throwaway folder (\S+) was removed", out)
    assert not os.path.exists(folder)  # a dry run leaves nothing behind


def test_options_come_from_the_config_with_its_comments_as_help(capsys):
    import dataclasses
    import re

    from cifarkit.cli import build_parser
    from cifarkit.options import field_help

    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    flat = re.sub(r"\s+", " ", text)  # argparse wraps the help at the terminal's width
    for name, help_ in field_help().items():
        if name == "data_fingerprint":
            continue
        flag = "--" + name.replace("_", "-")
        # each option's help is its field's whole comment, then the default as typed
        at = flat.find(f" {help_} (default: ")
        assert at > 0 and flag in flat[at - 60 : at], flag
    assert "--label-smoothing" in text and "--milestones EPOCH" in text
    assert "(default: 10 15)" not in flat and "(default: unset)" in flat
    # (textwrap may break "--no-compile" after a hyphen)
    assert "(default: --lookahead)" in flat and "(default: --no-compile)" in flat.replace("- ", "-")
    assert "--data-fingerprint" not in text
    assert {f.name for f in dataclasses.fields(main.__globals__["TrainConfig"])} == set(
        field_help()
    )


def test_a_path_with_a_newline_is_still_one_line(tmp_path, capsys):
    from cifarkit.cli import main

    odd = tmp_path / "two\nlines"
    code = main(["train", "--dry-run", "--data", str(odd), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "two[newline]lines" in err


@pytest.mark.slow  # a real process, stopped
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_command_stopped_by_a_signal_says_so_in_one_line(tmp_path, sig):
    import signal
    import time

    (tmp_path / "slow_net.py").write_text(
        "import time\nimport torch.nn as nn\n\nclass Net(nn.Sequential):\n"
        "    def __init__(self):\n        print('building', flush=True)\n        time.sleep(60)\n"
        "        super().__init__(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-m", "cifarkit", "summary", "--model", "slow_net.py:Net"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "building"  # inside the command now
        time.sleep(0.2)
        p.send_signal(getattr(signal, sig))
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 128 + getattr(signal, sig)
    assert err.strip().count("\n") == 0 and f"summary stopped by {sig}" in err, err
