"""Nothing lost: kills, Ctrl-C, exact resume, hostile checkpoints, no partial files.

These tests drive real `python -m cifarkit` subprocesses on a tiny dataset they write themselves.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifarkit import CheckpointError, TrainConfig, create_model, load_checkpoint, model_from_checkpoint
from cifarkit.checkpoint import save_checkpoint
from conftest import tiny_arrays, write_tree

EPOCHS = 8
TIMING = ("train_seconds", "eval_seconds", "images_per_second")


@pytest.fixture(scope="module")
def data_tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("data") / "tree", "png", tiny_arrays(20, 10, seed=1))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ, CIFARKIT_CACHE=str(tmp_path_factory.mktemp("cache")), PYTHONUNBUFFERED="1")
    return e


def train_cmd(out: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cifarkit", "train", "--data", str(data), "--out", str(out),
            "--epochs", str(EPOCHS), "--batch-size", "50", "--eval-batch-size", "100", "--lr", "0.05",
            "--dropout", "0.1", "--ema", "0.9", "--no-lookahead", "--no-progress", *extra]


def rows(run: Path) -> list[dict]:
    try:
        return json.loads((run / "history.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_tree, env):
    """One uninterrupted run: the history, weights and test accuracy every resumed run must match."""
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(train_cmd(out, data_tree), env=env, check=True, capture_output=True)
    return out


def kill_after(cmd, env, run: Path, min_epochs: int, extra_delay: float) -> bool:
    """Start a training run, SIGKILL it `extra_delay` s after `min_epochs` epochs are on disk.
    Returns True if the process was still running when killed."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(rows(run)) < min_epochs and p.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(extra_delay)
        alive = p.poll() is None
        p.send_signal(signal.SIGKILL)
        p.wait()
        return alive
    finally:
        if p.poll() is None:
            p.kill()


# kill points: right after an epoch's history lands (the checkpoint write follows), and random moments
KILL_POINTS = [(1, 0.0), (3, 0.0), (5, 0.0)] + [(1, random.Random(i).uniform(0.05, 1.5)) for i in range(3)]


@pytest.mark.parametrize("min_epochs, delay", KILL_POINTS)
def test_sigkill_then_resume_is_exact(tmp_path, data_tree, env, reference, min_epochs, delay):
    run = tmp_path / "run"
    assert kill_after(train_cmd(run, data_tree), env, run, min_epochs, delay), "run finished before the kill"
    ckpt = load_checkpoint(run / "last.pt")  # intact and loadable, whatever moment the kill hit
    assert 1 <= ckpt["epoch"] < EPOCHS
    p = subprocess.run([sys.executable, "-m", "cifarkit", "train", "--resume", str(run / "last.pt"),
                        "--data", str(data_tree), "--no-progress"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert strip(rows(run)) == strip(rows(reference))
    done, ref = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    for k, v in ref["model"].items():
        assert torch.equal(done["model"][k], v), k
    for k, v in ref["ema"]["module"].items():
        assert torch.equal(done["ema"]["module"][k], v), k
    res, ref_res = (json.loads((d / "results.json").read_text()) for d in (run, reference))
    assert res["final_test_correct"] == ref_res["final_test_correct"]
    assert not list(run.glob(".*.tmp"))


def test_atomic_checkpoint_survives_sigkill_mid_write(tmp_path):
    """A writer saving 16 MB checkpoints in a loop is killed at random moments: the file on disk is
    always a complete checkpoint (every value equals its epoch), never a torn one."""
    script = (
        "import sys, torch\n"
        "from cifarkit.checkpoint import save_checkpoint\n"
        "for i in range(10**6):\n"
        "    save_checkpoint(sys.argv[1], {'config': {}, 'epoch': i, 'model': {'w': torch.full((4_000_000,), float(i))}})\n"
        "    print(i, flush=True)\n")
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    for _ in range(8):
        p = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
        p.stdout.readline()  # at least one complete checkpoint exists
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait()
        ckpt = torch.load(path, weights_only=True)
        assert bool((ckpt["model"]["w"] == ckpt["epoch"]).all())


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, data_tree, env):
    run = tmp_path / "run"
    p = subprocess.Popen(train_cmd(run, data_tree, "--epochs", "200"), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    while len(rows(run)) < 2 and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert "Interrupted during epoch" in out and f"--resume {run / 'last.pt'}" in out
    assert "Traceback" not in err
    assert load_checkpoint(run / "last.pt")["epoch"] >= 2


# ---------------------------------------------------------------- hostile checkpoints: one line each
def run_cli(*argv: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifarkit", *argv], capture_output=True, text=True, env=env)


def assert_one_line(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and needle in p.stderr, p.stderr


@pytest.fixture(scope="module")
def good_checkpoint(reference):
    return reference / "last.pt"


def test_truncated_checkpoint(tmp_path, good_checkpoint):
    bad = tmp_path / "cut.pt"
    bad.write_bytes(good_checkpoint.read_bytes()[:5000])
    assert_one_line(run_cli("evaluate", "--checkpoint", str(bad)), "cannot read checkpoint")
    assert_one_line(run_cli("train", "--resume", str(bad)), "cannot read checkpoint")


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    assert_one_line(run_cli("evaluate", "--checkpoint", str(junk)), "cannot read checkpoint")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert_one_line(run_cli("evaluate", "--checkpoint", str(tensor)), "is not a cifarkit checkpoint")
    assert_one_line(run_cli("evaluate", "--checkpoint", str(tmp_path / "none.pt")), "checkpoint not found")


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoint_with_code_is_refused_and_never_run(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "cifarkit-checkpoint", "version": 1, "x": Payload()}, evil)
    p = subprocess.run([sys.executable, "-m", "cifarkit", "evaluate", "--checkpoint", str(evil)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert_one_line(p, "cannot read checkpoint")
    assert not (tmp_path / "PWNED").exists()


def test_checkpoint_from_another_network(tmp_path, good_checkpoint):
    ckpt = load_checkpoint(good_checkpoint)
    ckpt["config"]["model"] = "compact"  # seed weights, but a config that claims another network
    other = tmp_path / "other.pt"
    save_checkpoint(other, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="do not fit network 'compact'"):
        model_from_checkpoint(other)
    assert_one_line(run_cli("evaluate", "--checkpoint", str(other)), "do not fit network 'compact'")


def test_model_from_checkpoint_gives_the_evaluated_weights(good_checkpoint):
    model, cfg, ckpt = model_from_checkpoint(good_checkpoint)
    assert isinstance(cfg, TrainConfig) and cfg.ema == 0.9
    ema = ckpt["ema"]["module"]
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    assert type(model) is type(create_model("seed"))


# ---------------------------------------------------------------- bad input leaves nothing behind
def test_bad_data_leaves_no_run_folder(tmp_path, env):
    out = tmp_path / "never"
    assert_one_line(run_cli("train", "--data", str(tmp_path / "missing"), "--out", str(out), env=env),
                    "data path not found")
    assert not out.exists()


def test_overwrite_keeps_the_old_run_if_setup_fails(tmp_path, data_tree, env, reference):
    run = tmp_path / "run"
    subprocess.run(train_cmd(run, data_tree, "--epochs", "1"), env=env, check=True, capture_output=True)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    p = run_cli("train", "--data", str(tmp_path / "missing"), "--out", str(run), "--overwrite", env=env)
    assert_one_line(p, "data path not found")
    assert {q.name: q.read_bytes() for q in run.iterdir()} == before


def test_out_that_is_a_file(tmp_path, data_tree, env):
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line(run_cli("train", "--data", str(data_tree), "--out", str(f), env=env), "is a file, not a folder")
    assert f.read_text() == "x"
