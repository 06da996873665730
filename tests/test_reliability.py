"""Nothing lost: kills, Ctrl-C / SIGTERM, two runs on one folder, resuming without --data, full and
read-only disks, hostile checkpoints, no partial files.

Real `python -m cifarkit` subprocesses only where a process must really die, be interrupted or race
another one; everything else runs in this process through `cifarkit.cli.main`. All runs train the
seed network on a tiny dataset the tests write themselves (100 train / 50 test images, two steps per
epoch).
"""

import contextlib
import io
import json
import os
import queue
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cifarkit.cli import main
from cifarkit.config import TrainConfig
from cifarkit.models import build_model
from cifarkit.runfolder.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from cifarkit.runfolder.files import LOCK, RUN_FILES
from cifarkit.runfolder.signals import SIGNAL_NAMES
from cifarkit.runfolder.state import checkpoint_epoch

from conftest import tiny_arrays, write_archive, write_tree

pytestmark = pytest.mark.slow  # real processes killed and interrupted, seconds each

EPOCHS = 5
TIMING = ("train_seconds", "eval_seconds", "images_per_second")
# fp32: on a CPU with native bf16 the first bf16 steps of every fresh process cost ~2 s of kernel
# set-up
RECIPE = (
    "--device",  # real processes stopped at moments timed for a CPU's epochs
    "cpu",
    "--batch-size",
    "50",
    "--eval-batch-size",
    "100",
    "--lr",
    "0.05",
    "--dropout",
    "0.1",
    "--ema",
    "0.9",
    "--no-lookahead",
    "--no-progress",
    "--precision",
    "fp32",
)
# seconds: generous, for a loaded 2-core machine (or a niced test run); each step's own work is tiny
WAIT = 900
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(scope="module")
def data_tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("data") / "tree", "png", tiny_arrays(10, 5, seed=1))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The subprocesses' environment: a private decode cache, and no CIFARKIT_DATA (runs name their
    data)."""
    e = dict(os.environ, CIFARKIT_CACHE=str(tmp_path_factory.mktemp("cache")), PYTHONUNBUFFERED="1")
    e.pop("CIFARKIT_DATA", None)
    return e


@pytest.fixture(autouse=True)
def no_data_default(monkeypatch):
    """In-process commands see no CIFARKIT_DATA either, so --data defaults to "not given"."""
    monkeypatch.delenv("CIFARKIT_DATA", raising=False)


def train_args(out: Path, data: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        *RECIPE,
        *extra,
    ]


def train_cmd(out: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cifarkit", *train_args(out, data, *extra)]


def cli(*argv: str) -> tuple[int, str, str]:
    """`python -m cifarkit ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def wait_until_locked(run: Path, proc: subprocess.Popen, timeout: float = WAIT) -> None:
    """Return once `proc` holds the flock on RUN/.lock (its pid written there and the lock not
    free)."""
    import fcntl

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with open(run / LOCK) as f:
                if f.read().strip() == str(proc.pid):
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        # free after all: the owner is about to take it
                        fcntl.flock(f, fcntl.LOCK_UN)
                    except BlockingIOError:
                        return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{proc.pid} did not lock {run} within {timeout} s")


def error_line(err: str) -> str:
    """The one line a failed command printed to stderr, besides the data set's "warning:" lines
    (the tiny data set draws one about its class counts)."""
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def assert_one_line(result: tuple[int, str, str], needle: str, code: int = 2) -> str:
    assert result[0] == code, result[2]
    line = error_line(result[2])
    assert needle in line, line
    return line


def rows(run: Path) -> list[dict]:
    try:
        return json.loads((run / "history.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def assert_clean(run: Path) -> None:
    """No lock file (the owner is gone) and no temp file of a cut-short write."""
    assert not (run / LOCK).exists() and not list(run.glob(".*.tmp")), sorted(
        p.name for p in run.iterdir()
    )


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
        p.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_tree, env):
    """One uninterrupted run: the history, weights and test accuracy every resumed run must
    match."""
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(
        train_cmd(out, data_tree), env=env, check=True, capture_output=True, timeout=WAIT
    )
    return out


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory, data_tree):
    """A run of 2 epochs stopped by Ctrl-C after epoch 1, made in this process: the SIGINT is sent
    from inside the first history write, so it waits for the critical section and stops the run
    right after it.
    """
    import cifarkit.training.trainer as trainer

    run = tmp_path_factory.mktemp("unfinished") / "run"
    real = trainer.write_history

    def write_then_ctrl_c(run_dir, history):
        real(run_dir, history)
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "write_history", write_then_ctrl_c)
        mp.setenv("CIFARKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("CIFARKIT_DATA", raising=False)
        code, _, err = cli(*train_args(run, data_tree, "--epochs", "2"))
    assert code == 130, err
    assert f"after epoch 1 is {run / 'last.pt'}" in error_line(err)
    assert (
        checkpoint_epoch(run / "last.pt") == 1
        and len(rows(run)) == 1
        and not (run / "results.json").exists()
    )
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- the reference run's files
def test_results_keys_single_view_and_separate_tta(reference):
    res = json.loads((reference / "results.json").read_text())
    history = rows(reference)
    # per epoch: single view
    assert len(history) == EPOCHS and all(h["eval_tta"] == "none" for h in history)
    last = history[-1]
    assert res["test_total"] == last["eval_total"] == 50 and res["epochs"] == EPOCHS
    assert (res["single_view_correct"], res["single_view_accuracy"]) == (
        last["eval_correct"],
        last["eval_accuracy"],
    )
    # the final TTA, kept apart
    assert res["tta"] == "flip-translate" and 0 <= res["tta_correct"] <= 50
    assert not any(k.startswith("final_test_") for k in res)
    assert sorted(p.name for p in reference.iterdir()) == sorted(RUN_FILES)


# ---------------------------------------------------------------- SIGKILL at any moment, then
# resume exactly
def kill_after(cmd, env, run: Path, min_epochs: int, extra_delay: float) -> bool:
    """Start a training run, SIGKILL it `extra_delay` s after `min_epochs` epochs are in its
    history. Returns True if the process was still running when killed."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + WAIT
        while len(rows(run)) < min_epochs and p.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(extra_delay)
        alive = p.poll() is None
        p.send_signal(signal.SIGKILL)
        p.wait()
        return alive
    finally:
        stop(p)


@posix_only
def test_sigkill_twice_then_resume_is_exact(tmp_path, data_tree, env, reference):
    """SIGKILL a run just as epoch 1 reaches its history (the next epoch is starting), resume it,
    SIGKILL the resumed run at a random moment after its first epoch, resume again: the same
    history, weights and test results as the run that was never stopped. Resuming is the command the
    interrupt message prints: no --data (it comes from the run) and no CIFARKIT_DATA."""
    run = tmp_path / "run"
    resume = [
        sys.executable,
        "-m",
        "cifarkit",
        "train",
        "--resume",
        str(run / "last.pt"),
        "--no-progress",
    ]
    saved = 0
    for cmd, delay in (
        (train_cmd(run, data_tree), 0.0),
        (resume, random.Random(0).uniform(0.05, 0.25)),
    ):
        assert kill_after(cmd, env, run, saved + 1, delay), "run finished before the kill"
        ckpt = load_checkpoint(run / "last.pt")  # intact and loadable, whatever moment the kill hit
        assert saved < ckpt["epoch"] < EPOCHS
        # the history follows the checkpoint
        assert len(rows(run)) in (ckpt["epoch"] - 1, ckpt["epoch"])
        saved = ckpt["epoch"]
    p = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=WAIT)
    assert p.returncode == 0, p.stderr
    assert strip(rows(run)) == strip(rows(reference))
    done, ref = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    for k, v in ref["model"].items():
        assert torch.equal(done["model"][k], v), k
    for k, v in ref["ema"]["module"].items():
        assert torch.equal(done["ema"]["module"][k], v), k
    res, ref_res = (json.loads((d / "results.json").read_text()) for d in (run, reference))
    for key in ("single_view_correct", "single_view_loss", "tta_correct", "test_total", "epochs"):
        assert res[key] == ref_res[key], key
    assert_clean(run)


@posix_only
def test_atomic_checkpoint_survives_sigkill_mid_write(tmp_path):
    """A writer saving 16 MB checkpoints in a loop is killed at random moments: the file on disk is
    always a complete checkpoint (every value equals its epoch), never a torn one."""
    script = (
        "import sys, torch\nfrom cifarkit.runfolder.checkpoint import save_checkpoint\nfor i in"
        " range(10**6):\n    save_checkpoint(sys.argv[1], {'config': {}, 'epoch': i, 'model': {'w':"
        " torch.full((4_000_000,), float(i))}})\n    print(i, flush=True)\n"
    )
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    for _ in range(4):
        p = subprocess.Popen(
            [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            p.stdout.readline()  # at least one complete checkpoint exists
            time.sleep(rng.uniform(0.0, 0.3))
            p.send_signal(signal.SIGKILL)
            p.wait()
        finally:
            stop(p)
        ckpt = torch.load(path, weights_only=True)
        assert bool((ckpt["model"]["w"] == ckpt["epoch"]).all())


# ---------------------------------------------------------------- Ctrl-C / SIGTERM while last.pt is
# written
def read_lines(p: subprocess.Popen) -> queue.Queue:
    """p's stdout lines in a queue (None at the end), so waiting for a line can time out."""
    q: queue.Queue = queue.Queue()

    def pump():
        for line in p.stdout:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def wait_for_epoch_line(q: queue.Queue, p: subprocess.Popen) -> int:
    """Block until the process prints an epoch line ("epoch 3/20: train loss ..."); its epoch."""
    deadline = time.time() + WAIT
    while time.time() < deadline:
        try:
            line = q.get(timeout=1)
        except queue.Empty:
            continue
        assert line is not None, f"exited with {p.wait()} before an epoch line"
        found = re.match(r"epoch (\d+)/\d+: ", line)
        if found:
            return int(found.group(1))
    raise AssertionError("no epoch line in time")


# A few milliseconds after an epoch's line the run is writing last.pt (5.7 MB, fsynced), best.pt,
# history.
# A closed terminal (SIGHUP) stops a run as SIGTERM does.
SIGNALS = [(signal.SIGINT, d) for d in (0.0, 0.002, 0.005, 0.010, 0.020)] + [
    (signal.SIGTERM, 0.005),
    (signal.SIGHUP, 0.005),
]


@posix_only
def test_signal_right_after_an_epoch_line_saves_says_and_resumes(tmp_path, data_tree, env):
    """Each signal stops a run within ms of an epoch line: exit 130 / 143, no traceback, one stderr
    line naming the epoch really in last.pt; the next run is the command that line prints (no
    --data), or, if no epoch was saved yet, the same command again. Both files agree: the history
    ends where last.pt does.
    """
    run, last = tmp_path / "run", tmp_path / "run" / "last.pt"
    first = train_cmd(run, data_tree, "--epochs", "20")  # never reached: every run here is stopped
    cmd, saved_epochs = first, []
    for sig, delay in SIGNALS:
        p = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            lines = read_lines(p)
            shown = wait_for_epoch_line(lines, p)
            time.sleep(delay)
            p.send_signal(sig)
            p.wait(timeout=WAIT)
            err = p.stderr.read()
        finally:
            stop(p)
        case = f"{signal.Signals(sig).name} {delay * 1000:.0f} ms after the line of epoch {shown}"
        assert p.returncode == 128 + sig, (case, err)
        msg = error_line(err)
        name = SIGNAL_NAMES[sig]
        assert re.match(
            rf"Interrupted during epoch ({shown}|{shown + 1}) by {re.escape(name)}: ", msg
        ), (case, msg)
        saved = checkpoint_epoch(last)
        # stopped before the first checkpoint: nothing is promised, the same command restarts
        if saved is None:
            assert shown == 1 and "no epoch had finished" in msg and "last.pt" not in msg, (
                case,
                msg,
            )
            assert not rows(run)
            cmd = first
        else:
            load_checkpoint(last)  # complete, not only its header
            # stopped before or after the epoch's checkpoint
            assert saved in (shown - 1, shown), case
            assert f"the checkpoint after epoch {saved} is {last}; resume with: " in msg, (
                case,
                msg,
            )
            assert [h["epoch"] for h in rows(run)] == list(range(1, saved + 1)), case
            resume = msg.split("resume with: ")[1]
            assert resume == f"python -m cifarkit train --resume {last}"
            # --no-progress: one line per epoch
            cmd = [sys.executable, *shlex.split(resume)[1:], "--no-progress"]
        saved_epochs.append(saved)
        assert_clean(run)
    # runs did resume and go on
    assert saved_epochs[-1] is not None and saved_epochs[-1] >= 2, saved_epochs


@posix_only
@pytest.mark.parametrize("gap", [0.03, 0.0])
def test_ctrl_c_twice_is_still_one_line(tmp_path, data_tree, env, gap):
    """An impatient second Ctrl-C (30 ms later, or at once) while the run stops: exit 130, the one
    line, no KeyboardInterrupt traceback."""
    p = subprocess.Popen(
        train_cmd(tmp_path / "run", data_tree, "--epochs", "20"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_epoch_line(read_lines(p), p)
        p.send_signal(signal.SIGINT)
        time.sleep(gap)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=WAIT)
        err = p.stderr.read()
    finally:
        stop(p)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert error_line(err).startswith("Interrupted during epoch ")


SWALLOWING_NET = """
import time
import torch.nn as nn
import torch.nn.functional as F

class Swallow(nn.Module):
    def __init__(self, marker="", dropout=0.0):
        super().__init__()
        self.marker = marker
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        try:
            if self.training:
                time.sleep(1.0)  # where the Ctrl-C lands: almost all of a step's time
        except:  # noqa: E722 - the student's bare except, which catches KeyboardInterrupt too
            open(self.marker, "a").write("swallowed\\n")
        return self.fc(F.relu(self.c(x)).mean((2, 3)))
"""


@posix_only
def test_ctrl_c_stops_a_network_that_swallows_it(tmp_path, data_tree, env):
    """A forward with a bare except catches the Ctrl-C: the run still stops (at the next batch,
    outside the network's code), saves what it finished and exits 130 with one line. (That a second
    Ctrl-C raises again is tested in this process: tests/test_runfolder.py.)"""
    (tmp_path / "net.py").write_text(SWALLOWING_NET)
    marker = tmp_path / "swallowed.txt"
    p = subprocess.Popen(
        train_cmd(
            tmp_path / "run",
            data_tree,
            "--epochs",
            "50",
            "--model",
            f"{tmp_path / 'net.py'}:Swallow(marker={str(marker)!r})",
            # no layout probe: it would time this network's 1 s training forwards six times
            "--channels-last",
            "no",
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = wait_for_epoch_line(read_lines(p), p)
        time.sleep(0.5)  # past the checkpoint writes, into the next step's forward
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)  # without the fix it trains on: 50 epochs of two 1 s steps
        err = p.stderr.read()
    finally:
        stop(p)
    assert marker.exists(), (
        "the Ctrl-C did not land in the network's except (the test proves nothing)"
    )
    assert p.returncode == 130 and "Traceback" not in err, err
    assert error_line(err).startswith("Interrupted during epoch ")
    assert checkpoint_epoch(tmp_path / "run" / "last.pt") >= first  # what finished is saved


# ---------------------------------------------------------------- two runs, one folder
@posix_only
def test_second_run_on_the_same_folder_fails_at_once(tmp_path, data_tree, env):
    run = tmp_path / "run"
    first = subprocess.Popen(
        train_cmd(run, data_tree, "--epochs", "2", "--seed", "1"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_locked(run, first)  # the observable fact, not a guess at how long start-up takes
        second = subprocess.run(
            train_cmd(run, data_tree, "--epochs", "2", "--seed", "2"),
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        first_running = first.poll() is None  # the second did not wait for the first
        out, err = first.communicate(timeout=WAIT)
    finally:
        stop(first)
    assert second.returncode == 2 and not second.stdout, second.stderr
    assert (
        second.stderr
        == f"cifarkit: error: {run} is in use by another cifarkit run (pid {first.pid}); "
        "wait for it or choose another --out\n"
    )
    assert first_running
    assert first.returncode == 0, err
    # no lock left, nothing of the second
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(run / name)["config"]["seed"] == 1
    res = json.loads((run / "results.json").read_text())
    assert f"single view {res['single_view_correct']}/{res['test_total']} " in out
    assert strip(rows(run)) == strip(load_checkpoint(run / "last.pt")["history"])


# ---------------------------------------------------------------- resume: the data comes from the
# run
def test_resume_without_data_uses_the_runs_data(tmp_path, unfinished):
    run = copy_run(unfinished, tmp_path / "run")
    code, out, err = cli("train", "--resume", str(run / "last.pt"), "--no-progress")
    assert code == 0, err
    assert f"resuming {run / 'last.pt'} after epoch 1/2" in out
    assert [h["epoch"] for h in rows(run)] == [1, 2] and (run / "results.json").is_file()
    assert (
        json.loads((run / "config.json").read_text())["data"]
        == load_checkpoint(run / "last.pt")["config"]["data"]
    )


def test_resume_refuses_other_images_and_accepts_the_same_in_another_format(
    tmp_path, unfinished, data_tree
):
    run = copy_run(unfinished, tmp_path / "run")
    before = files(run)
    # same counts, other pixels
    other = write_tree(tmp_path / "other", "png", tiny_arrays(10, 5, seed=2))
    line = assert_one_line(
        cli("train", "--resume", str(run / "last.pt"), "--data", str(other), "--no-progress"),
        "is not the dataset this run started on",
    )
    assert str(other) in line and "--data" in line
    assert files(run) == before and sorted(p.name for p in run.iterdir()) == sorted(before)

    packed = write_archive(data_tree, tmp_path / "same.tar")  # the same PNGs, packed
    code, out, err = cli(
        "train", "--resume", str(run / "last.pt"), "--data", str(packed), "--no-progress"
    )
    assert code == 0, err
    assert [h["epoch"] for h in rows(run)] == [1, 2] and (run / "results.json").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"] == str(packed)
    assert cfg["data_fingerprint"] == json.loads(before["config.json"])["data_fingerprint"]


def test_resume_names_cifarkit_data_when_it_chose_other_images(tmp_path, unfinished, monkeypatch):
    run = copy_run(unfinished, tmp_path / "run")
    before = files(run)
    other = write_tree(tmp_path / "other", "png", tiny_arrays(10, 5, seed=2))
    monkeypatch.setenv("CIFARKIT_DATA", str(other))  # left over in the shell from another project
    line = assert_one_line(
        cli("train", "--resume", str(run / "last.pt"), "--no-progress"),
        "is not the dataset this run started on",
    )
    assert f"$CIFARKIT_DATA={other} chose it: unset it, or pass --data " in line
    assert files(run) == before and sorted(p.name for p in run.iterdir()) == sorted(before)


def test_resume_refuses_a_recipe_change_in_one_line(tmp_path, unfinished):
    run = copy_run(unfinished, tmp_path / "run")
    before = files(run)
    line = assert_one_line(
        cli("train", "--resume", str(run / "last.pt"), "--lr", "0.1", "--no-progress"),
        "refusing to change lr=0.1 (run: 0.05)",
    )
    assert "another --out" in line
    assert files(run) == before


def test_dry_run_cannot_resume(tmp_path, unfinished):
    """--dry-run is a throwaway check; with --resume it would train (or rewrite) the real run."""
    run = copy_run(unfinished, tmp_path / "run")
    before = files(run)
    assert_one_line(
        cli("train", "--dry-run", "--resume", str(run / "last.pt"), "--no-progress"), "--dry-run"
    )
    assert files(run) == before


# ---------------------------------------------------------------- stopped before the first
# checkpoint
@posix_only
def test_killed_before_the_first_checkpoint_the_same_command_just_starts(tmp_path, data_tree, env):
    run = tmp_path / "run"
    argv = train_args(run, data_tree, "--epochs", "1")
    p = subprocess.Popen(
        [sys.executable, "-m", "cifarkit", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + WAIT
        while not (run / "config.json").exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        stop(p)
    assert p.returncode == -signal.SIGKILL
    visible = {q.name for q in run.iterdir() if not q.name.startswith(".")}
    assert visible <= {"config.json"} and {q.name for q in run.iterdir()} - visible <= {LOCK}
    code, out, err = cli(*argv)
    assert code == 0, err
    assert "last.pt" not in out + err and "unfinished" not in out + err and "resum" not in out + err
    assert (run / "results.json").is_file()
    assert_clean(run)


def ctrl_c_then(real):
    """`real`, wrapped so that it sends this process a Ctrl-C first and is cut short by it."""

    def wrapped(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the work the signal interrupts
        return real(*a, **k)

    return wrapped


@posix_only
def test_ctrl_c_before_the_first_checkpoint_promises_nothing(tmp_path, data_tree, monkeypatch):
    """Ctrl-C during epoch 1 (sent from inside this process as the epoch starts): exit 130, one line
    that promises no last.pt; the same command then just starts."""
    import cifarkit.training.trainer as trainer

    run = tmp_path / "run"
    argv = train_args(run, data_tree, "--epochs", "1")
    real = trainer.train_one_epoch
    monkeypatch.setattr(trainer, "train_one_epoch", ctrl_c_then(real))
    line = assert_one_line(
        cli(*argv), "Interrupted during epoch 1 by Ctrl-C (SIGINT): no epoch had finished", 130
    )
    assert "last.pt" not in line and "the same command starts the run afresh" in line
    assert sorted(q.name for q in run.iterdir()) == ["config.json"]
    # (not undo(): that would drop the private cache too)
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    code, out, err = cli(*argv)
    assert code == 0, err
    assert "last.pt" not in out + err and "unfinished" not in out + err
    assert [h["epoch"] for h in rows(run)] == [1] and (run / "results.json").is_file()


@posix_only
def test_ctrl_c_while_a_resume_loads_its_data(tmp_path, unfinished, monkeypatch):
    """Ctrl-C before the first epoch of a resumed run: one line (no "during epoch"), naming the
    epoch in last.pt."""
    run = copy_run(unfinished, tmp_path / "run")
    before = files(run)
    import cifarkit.training.build as build

    monkeypatch.setattr(build, "load_run_data", ctrl_c_then(build.load_run_data))
    code, _, err = cli("train", "--resume", str(run / "last.pt"), "--no-progress")
    last = run / "last.pt"
    assert (
        code == 130
        and err
        == f"Interrupted by Ctrl-C (SIGINT): the checkpoint after epoch 1 is {last}; "
        f"resume with: python -m cifarkit train --resume {last}\n"
    ), err
    assert files(run) == before


def test_diverged_before_the_first_checkpoint_the_next_command_just_starts(tmp_path, data_tree):
    run = tmp_path / "run"
    diverge = train_args(run, data_tree, "--epochs", "1", "--lr", "1e30", "--schedule", "constant")
    for _ in range(2):  # the same command again: the same divergence, not "already holds a run"
        line = assert_one_line(cli(*diverge), "loss is", code=1)
        assert "last.pt" not in line and "Lower --lr" in line
        assert {q.name for q in run.iterdir()} <= {"config.json"}
    code, out, err = cli(*train_args(run, data_tree, "--epochs", "1"))
    assert code == 0, err
    assert "last.pt" not in out + err and "unfinished" not in out + err
    assert json.loads((run / "config.json").read_text())["lr"] == 0.05


# ---------------------------------------------------------------- read-only and full disks, for
# real
def test_read_only_out_fails_before_training(mount_tmpfs, data_tree, reference):
    mnt = mount_tmpfs(1 << 20, read_only=True, prepare=lambda m: (m / "run").mkdir())
    for out in (mnt / "run", mnt / "new", mnt / "new" / "deeper"):
        code, stdout, err = cli(*train_args(out, data_tree))
        assert code == 2 and stdout == "", stdout  # nothing loaded, nothing trained
        assert (
            err == f"cifarkit: error: {out} is on a read-only file system; choose another --out\n"
        )
        assert not (mnt / "new").exists()
    # a finished run on a read-only disk: resuming it fails the same way, and it stays as it was
    ro = mount_tmpfs(
        4 * (reference / "last.pt").stat().st_size,
        read_only=True,
        prepare=lambda m: shutil.copytree(reference, m / "run"),
    )
    before = files(ro / "run")
    assert_one_line(
        cli("train", "--resume", str(ro / "run" / "last.pt"), "--no-progress"),
        "read-only file system",
    )
    assert files(ro / "run") == before


def test_full_disk_one_line_and_the_previous_checkpoint_loads(mount_tmpfs, data_tree, reference):
    # every checkpoint of this recipe is about this size
    size = (reference / "last.pt").stat().st_size
    # room for epoch 1's last.pt and best.pt, not for epoch 2's new last.pt beside them
    run = mount_tmpfs(int(2.5 * size)) / "run"
    line = assert_one_line(cli(*train_args(run, data_tree)), "no space left on device", code=1)
    assert (
        line == f"cifarkit: error: no space left on device while writing {run / 'last.pt'}; "
        "the previous checkpoint is intact"
    )
    assert (
        load_checkpoint(run / "last.pt")["epoch"] == 1
        and load_checkpoint(run / "best.pt")["epoch"] == 1
    )
    assert [h["epoch"] for h in rows(run)] == [1]
    assert_clean(run)
    # room for no checkpoint at all: the first write fails, and says that nothing was created
    run = mount_tmpfs(size // 2) / "run"
    line = assert_one_line(cli(*train_args(run, data_tree)), "no space left on device", code=1)
    assert line.endswith(f"while writing {run / 'last.pt'}; it was not created")
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


# ---------------------------------------------------------------- hostile checkpoints: one line
# each
@pytest.fixture(scope="module")
def good_checkpoint(reference):
    return reference / "last.pt"


def test_truncated_checkpoint(tmp_path, good_checkpoint):
    bad = tmp_path / "cut.pt"
    bad.write_bytes(good_checkpoint.read_bytes()[:5000])
    assert_one_line(cli("evaluate", "--checkpoint", str(bad)), "cannot read checkpoint")
    assert_one_line(cli("train", "--resume", str(bad)), "cannot read checkpoint")


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    assert_one_line(cli("evaluate", "--checkpoint", str(junk)), "cannot read checkpoint")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert_one_line(cli("evaluate", "--checkpoint", str(tensor)), "is not a cifarkit checkpoint")
    assert_one_line(
        cli("evaluate", "--checkpoint", str(tmp_path / "none.pt")), "checkpoint not found"
    )


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoint_with_code_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "cifarkit-checkpoint", "version": 1, "x": Payload()}, evil)
    assert_one_line(cli("evaluate", "--checkpoint", str(evil)), "cannot read checkpoint")
    assert_one_line(cli("train", "--resume", str(evil)), "cannot read checkpoint")
    assert not (tmp_path / "PWNED").exists()


def test_checkpoint_from_another_network(tmp_path, good_checkpoint):
    ckpt = load_checkpoint(good_checkpoint)
    ckpt["config"]["model"] = "compact"  # seed weights, but a config that claims another network
    other = tmp_path / "other.pt"
    save_checkpoint(other, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="do not fit network 'compact'"):
        model_from_checkpoint(other)
    assert_one_line(cli("evaluate", "--checkpoint", str(other)), "do not fit network 'compact'")


def test_model_from_checkpoint_gives_the_evaluated_weights(good_checkpoint):
    model, cfg, ckpt = model_from_checkpoint(good_checkpoint)
    assert isinstance(cfg, TrainConfig) and cfg.ema == 0.9
    ema = ckpt["ema"]["module"]
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    assert type(model) is type(build_model("seed"))


# ---------------------------------------------------------------- bad input leaves nothing behind
def test_bad_data_leaves_no_run_folder(tmp_path):
    out = tmp_path / "never"
    assert_one_line(
        cli("train", "--data", str(tmp_path / "missing"), "--out", str(out)), "data path not found"
    )
    assert not out.exists()


def test_overwrite_keeps_the_old_run_if_setup_fails(tmp_path, reference):
    run = copy_run(reference, tmp_path / "run")
    before = files(run)
    assert_one_line(
        cli("train", "--data", str(tmp_path / "missing"), "--out", str(run), "--overwrite"),
        "data path not found",
    )
    assert files(run) == before and sorted(p.name for p in run.iterdir()) == sorted(before)


def test_out_that_is_a_file(tmp_path, data_tree):
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line(
        cli("train", "--data", str(data_tree), "--out", str(f)), "is a file, not a folder"
    )
    assert f.read_text() == "x"


def test_out_that_is_a_dangling_link_says_so(tmp_path, data_tree):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone" / "run")
    line = assert_one_line(
        cli("train", "--data", str(data_tree), "--out", str(link)), "is a symbolic link to"
    )
    assert "which does not exist" in line and not (tmp_path / "gone").exists() and link.is_symlink()


NOTEBOOK_STYLE = """
import dataclasses, json, sys
import torch
from torch import nn
import cifarkit as ck

class Net(nn.Module):  # written in a notebook cell: the class lives in __main__
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 10)
    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

torch.randn(int(sys.argv[3]))  # earlier cells used the global RNG, differently in each session
net = Net()  # an object: its weights come from this session's RNG
cfg = ck.TrainConfig(epochs=2, batch_size=50, device="cpu", precision="fp32", progress=False,
                     lookahead=False, tta="none", data=sys.argv[1], out=sys.argv[2] + "/class")
obj = dataclasses.replace(cfg, out=sys.argv[2] + "/object")
runs = [ck.fit(cfg, model=Net), ck.fit(obj, model=net)]
print(json.dumps([[h["train_loss"] for h in r.history] + [r.final["seeded_init"]] for r in runs]))
"""


def test_a_network_class_trains_the_same_in_two_fresh_processes(tmp_path, data_tree, env):
    """fit(cfg, model=Net) builds the network after seeding: two sessions that used the RNG
    differently before still train identically. A network object's weights are the session's:
    results say so."""
    script = tmp_path / "nb.py"
    script.write_text(NOTEBOOK_STYLE)

    def session(i: int) -> list:
        out = subprocess.run(
            [sys.executable, str(script), str(data_tree), str(tmp_path / f"s{i}"), str(7 * i + 1)],
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    (a, c), (b, d) = session(1), session(2)
    assert a == b and a[-1] is True  # the class: bit for bit, and recorded as seeded
    # the objects: the seed does not cover them, and says so
    assert c[-1] is False and d[-1] is False and c[:-1] != d[:-1]
