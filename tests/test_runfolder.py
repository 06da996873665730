"""Run folder safety: the exclusive lock, the folder's state, a writable --out, and stopping on
signals."""

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cifarkit.atomic import atomic_write_text
from cifarkit.base import CifarkitError
from cifarkit.runfolder.checkpoint import load_checkpoint, save_checkpoint
from cifarkit.runfolder.files import LOCK, RUN_FILES
from cifarkit.runfolder.lock import RunDirError, RunLock
from cifarkit.runfolder.signals import RunInterrupted, StopSignals
from cifarkit.runfolder.state import (
    check_run_dir,
    checkpoint_epoch,
    clear_run_dir,
    ensure_writable,
    interrupt_message,
    run_state,
)

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="flock and POSIX signals")


def one_line(e: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


def write_ckpt(path: Path, epoch: int) -> None:
    save_checkpoint(
        path, {"config": {}, "model": {"w": torch.full((4,), float(epoch))}, "epoch": epoch}
    )


# ------------------------------------------------------------------------------------------ the
# lock
@posix_only
def test_lock_is_exclusive_and_fails_at_once(tmp_path):
    run = tmp_path / "runs" / "seed"
    with RunLock(run) as lock:
        assert lock.held and (run / LOCK).read_text().strip() == str(os.getpid())
        start = time.perf_counter()
        with pytest.raises(RunDirError) as e:
            RunLock(run).acquire()  # another open file: conflicts even within this process
        assert time.perf_counter() - start < 1.0
        one_line(e, str(run), f"pid {os.getpid()}", "in use by another cifarkit run", "--out")
    assert not lock.held
    with RunLock(run):  # free again
        pass


@posix_only
def test_lock_leaves_no_trace_in_a_folder_it_created(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    lock = RunLock(run).acquire()
    assert run.is_dir()
    lock.release()
    assert not (tmp_path / "a").exists()  # a run that failed during setup leaves nothing behind
    lock.release()  # a second release is harmless


@posix_only
def test_lock_keeps_the_folder_and_the_run_files(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        (run / "config.json").write_text("{}")
    assert (run / "config.json").exists() and not (run / LOCK).exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with RunLock(existing):
        pass
    assert existing.is_dir()


@posix_only
def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "precious.txt"
    run.mkdir()
    outside.write_text("not yours\n")
    (run / LOCK).symlink_to(outside)
    with pytest.raises(RunDirError) as e:
        RunLock(run).acquire()
    one_line(e, "symbolic link")
    assert outside.read_text() == "not yours\n" and (run / LOCK).is_symlink()


def test_a_lock_file_replaced_by_a_folder_is_recovered_or_named(tmp_path):
    run = tmp_path / "run"
    (run / LOCK).mkdir(parents=True)  # empty: nothing can hold it, so it is replaced
    with RunLock(run):
        assert (run / LOCK).is_file()
    (run / LOCK).mkdir()
    (run / LOCK / "kept.txt").write_text("someone's\n")
    with pytest.raises(RunDirError) as e:
        RunLock(run).acquire()
    one_line(e, "is a folder, not cifarkit's lock file: remove it")
    assert (run / LOCK / "kept.txt").read_text() == "someone's\n"  # nothing of it is removed


def test_the_command_line_locks_before_importing_torch():
    # `train` takes its lock from cifarkit.runfolder.lock right after parsing: neither may pull in
    # torch, or a second command started during the first's imports could take the folder.
    code = (
        "import sys, cifarkit, cifarkit.cli, cifarkit.runfolder.lock; cifarkit.cli.build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


@posix_only
def test_lock_is_released_on_error(tmp_path):
    with pytest.raises(ValueError):
        with RunLock(tmp_path / "run"):
            raise ValueError
    with RunLock(tmp_path / "run"):
        pass


@posix_only
def test_sigkilled_owner_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    script = (
        "import sys, time\nfrom cifarkit.runfolder.lock import RunLock\n"
        "RunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(60)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", script, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError) as e:
            RunLock(run).acquire()
        one_line(e, f"pid {p.pid}")
    finally:
        p.kill()
        p.wait()
    assert (run / LOCK).exists()  # the file stays, but the OS dropped the lock with the process
    with RunLock(run):
        assert (run / LOCK).read_text().strip() == str(os.getpid())


@posix_only
def test_lock_waiter_follows_a_removed_lock_file(tmp_path, monkeypatch):
    """A second run opens the lock file, then its owner releases (unlinks) it before the second run
    locks: it must not end up owning a file nobody else can see, but lock the current one."""
    import cifarkit.runfolder.lock as rundir

    run = tmp_path / "run"
    first = RunLock(run).acquire()
    (run / "config.json").write_text("{}")  # the folder stays
    real, calls = rundir._try_lock, []

    def owner_releases_first(fd):
        if not calls:
            first.release()
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(rundir, "_try_lock", owner_releases_first)
    with RunLock(run) as second:
        assert len(calls) == 2  # locked the unlinked file, noticed, retried on the new one
        assert (
            os.path.samefile(run / LOCK, f"/proc/self/fd/{second._fd}")
            if sys.platform == "linux"
            else True
        )
        monkeypatch.setattr(rundir, "_try_lock", real)
        with pytest.raises(RunDirError):
            RunLock(run).acquire()


def test_lock_on_a_file_is_one_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunDirError) as e:
        RunLock(f).acquire()
    one_line(e, str(f), "is a file")
    assert f.read_text() == "x"


# ------------------------------------------------------------------------------------- folder state
def test_run_state(tmp_path):
    run = tmp_path / "run"
    assert run_state(run) == "empty"  # not there yet
    run.mkdir()
    assert run_state(run) == "empty"
    (run / "config.json").write_text("{}")  # killed or diverged before the first checkpoint
    # a config.json alone holds nothing a new run would not write again
    assert run_state(run) == "empty"
    (run / "history.json").write_text("[]")
    # any other run file without a loadable last.pt: never "empty"
    assert run_state(run) == "damaged"
    (run / "history.json").unlink()
    # not loadable: nothing to resume, and not to be deleted
    (run / "last.pt").write_bytes(os.urandom(100))
    assert run_state(run) == "damaged" and checkpoint_epoch(run / "last.pt") is None
    write_ckpt(run / "last.pt", 3)
    assert run_state(run) == "unfinished" and checkpoint_epoch(run / "last.pt") == 3
    (run / "results.json").write_text("{}")
    assert run_state(run) == "finished"
    (run / "last.pt").unlink()  # checkpoints deleted to save space: the results still count
    assert run_state(run) == "finished"


def test_check_run_dir(tmp_path):
    run = tmp_path / "run"
    assert check_run_dir(run, overwrite=False) == "empty"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert check_run_dir(run, overwrite=False) == "empty"  # the same command just starts again
    write_ckpt(run / "last.pt", 2)
    with pytest.raises(RunDirError) as e:
        check_run_dir(run, overwrite=False)
    one_line(
        e,
        f"{run} already holds an unfinished run",
        "epoch 2",
        f"--resume {run / 'last.pt'}",
        "--overwrite",
    )
    assert check_run_dir(run, overwrite=True) == "unfinished"
    (run / "results.json").write_text("{}")
    with pytest.raises(CifarkitError, match="already holds a finished run.*--overwrite") as e:
        check_run_dir(run, overwrite=False)
    assert "--resume" not in str(e.value)
    assert check_run_dir(run, overwrite=True) == "finished"
    f = tmp_path / "file"
    f.write_text("x")
    for overwrite in (False, True):
        with pytest.raises(RunDirError) as e:
            check_run_dir(f, overwrite)
        one_line(e, f"--out {f} is a file, not a folder")


@posix_only
def test_clear_run_dir_keeps_the_lock_and_other_files(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        for name in RUN_FILES + (".last.pt.abc123.tmp", "notes.txt"):
            (run / name).write_text("x")
        clear_run_dir(run)
        assert sorted(p.name for p in run.iterdir()) == [LOCK, "notes.txt"]
        clear_run_dir(run)  # nothing left to remove: fine


def test_ensure_writable_leaves_no_trace(tmp_path):
    ensure_writable(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "run").mkdir()
    ensure_writable(tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunDirError) as e:
        ensure_writable(f)
    one_line(e, str(f), "is a file")
    with pytest.raises(RunDirError) as e:
        ensure_writable(f / "run")
    one_line(e, str(f / "run"))


@pytest.mark.parametrize(
    "code, needle",
    [
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
    ],
)
def test_ensure_writable_injected_errors(tmp_path, monkeypatch, code, needle):
    """chmod 0o555 does not stop root, so the OS error is injected (a real read-only mount is tested
    below)."""

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("cifarkit.runfolder.state.tempfile.mkstemp", refuse)
    with pytest.raises(RunDirError) as e:
        ensure_writable(tmp_path / "new" / "run")
    one_line(e, str(tmp_path / "new" / "run"), needle)
    assert not (tmp_path / "new").exists()


@pytest.fixture
def readonly_dir(mount_tmpfs):
    """A real read-only file system (a 4 MiB tmpfs remounted ro) holding one finished file; skipped
    where mounting is not permitted (not root, not Linux, a container without CAP_SYS_ADMIN)."""

    def prepare(mnt):
        (mnt / "run").mkdir()
        write_ckpt(mnt / "run" / "last.pt", 4)

    return mount_tmpfs(4 << 20, read_only=True, prepare=prepare)


def test_read_only_mount_fails_before_training_in_one_line(readonly_dir):
    run = readonly_dir / "run"
    for target in (run, readonly_dir / "new"):
        with pytest.raises(RunDirError) as e:
            ensure_writable(target)
        one_line(e, str(target), "read-only file system", "--out")
        with pytest.raises(RunDirError) as e:
            RunLock(target).acquire()
        one_line(e, str(target), "read-only file system")
    with pytest.raises(CifarkitError) as e:
        atomic_write_text(run / "history.csv", "epoch\n")
    one_line(e, "read-only file system", "history.csv")
    assert load_checkpoint(run / "last.pt")["epoch"] == 4


# ------------------------------------------------------------------------------------------ signals
@posix_only
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_outside_a_critical_section_stops_at_once(sig, code):
    with StopSignals():
        start = time.perf_counter()
        with pytest.raises(RunInterrupted) as e:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # "training": the signal cuts it short
    assert time.perf_counter() - start < 2
    assert (
        isinstance(e.value, KeyboardInterrupt)
        and e.value.signum == sig
        and e.value.exit_code == code
    )


@posix_only
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_inside_a_critical_section_waits_for_the_write(tmp_path, sig, code):
    path = tmp_path / "last.pt"
    write_ckpt(path, 1)
    done = []
    with StopSignals() as stop:
        with pytest.raises(RunInterrupted) as e:
            with stop.critical():
                os.kill(os.getpid(), sig)
                # the handler has run by now (sleep is where Python checks for signals)
                time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGINT)  # a second signal is deferred too
                time.sleep(0.05)
                write_ckpt(path, 2)
                done.append(True)
            # never reached: the signal is raised as the section ends
            done.append("after the section")
    assert done == [True] and e.value.signum == sig and e.value.exit_code == code
    assert load_checkpoint(path)["epoch"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


@posix_only
def test_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(RunInterrupted):
            with StopSignals() as stop:
                assert signal.getsignal(signal.SIGTERM) == stop._handle
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]
    finally:
        signal.signal(signal.SIGTERM, before[signal.SIGTERM])


@posix_only
def test_later_signals_are_ignored_while_the_run_unwinds():
    with StopSignals() as stop:
        with pytest.raises(RunInterrupted):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        stop.delivered()  # what fit does first when it catches the interrupt
        # e.g. Ctrl-C pressed twice: the cleanup is not cut short
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        stop.check()  # nothing to raise: the caller has it
    assert stop.received == signal.SIGINT


def test_a_swallowed_interrupt_is_raised_again_on_the_next_signal_and_at_the_next_check():
    with StopSignals() as stop:
        try:  # a network's forward with a bare except
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except BaseException:
            pass
        # the loop's check between batches (outside the network's code)
        with pytest.raises(RunInterrupted):
            stop.check()
        with pytest.raises(RunInterrupted) as e:  # a second Ctrl-C raises again, as in plain Python
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert e.value.exit_code == 130
        written = False
        # but never inside a checkpoint write: raised when it ends
        with pytest.raises(RunInterrupted):
            with stop.critical():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                stop.check()
                written = True
        assert written


def test_stop_signals_in_another_thread_do_nothing():
    before = signal.getsignal(signal.SIGINT)
    errors = []

    def work():
        try:
            with StopSignals() as stop:
                with stop.critical():
                    assert signal.getsignal(signal.SIGINT) == before
        except Exception as e:  # signal.signal outside the main thread would raise ValueError
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert errors == [] and signal.getsignal(signal.SIGINT) == before


def test_interrupt_message_is_one_line_whatever_the_folder_is_named(tmp_path):
    run = tmp_path / "two\nlines\rrun"
    run.mkdir()
    write_ckpt(run / "last.pt", 1)
    msg = interrupt_message(run, signal.SIGHUP, epoch=2)
    assert "\n" not in msg and "\r" not in msg and "two[newline]lines[return]run" in msg
    assert msg.startswith("Interrupted during epoch 2 by SIGHUP (the terminal was closed)")


def test_interrupt_message_names_the_saved_epoch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # history may run ahead
    (run / "history.json").write_text(json.dumps([{"epoch": 1}, {"epoch": 2}]))
    msg = interrupt_message(run, signal.SIGTERM, epoch=3)
    assert (
        msg.startswith("Interrupted during epoch 3 by SIGTERM") and "no epoch had finished" in msg
    )
    assert "last.pt" not in msg and "\n" not in msg  # never promise a last.pt that is not there
    write_ckpt(run / "last.pt", 2)
    msg = interrupt_message(run, signal.SIGINT, epoch=3)
    assert (
        "Ctrl-C" in msg
        and "after epoch 2" in msg
        and f"--resume {run / 'last.pt'}" in msg
        and "\n" not in msg
    )
    assert interrupt_message(run).startswith("Interrupted by Ctrl-C")


FAKE_FIT = """
import sys, time, torch
from cifarkit.runfolder.checkpoint import save_checkpoint
from cifarkit.atomic import atomic_write_json
from cifarkit.runfolder.lock import RunLock
from cifarkit.runfolder.signals import RunInterrupted, StopSignals
from cifarkit.runfolder.state import check_run_dir, ensure_writable, interrupt_message
run = sys.argv[1]
epoch = 0
try:
    with StopSignals() as stop, RunLock(run):
        check_run_dir(run, overwrite=False)
        ensure_writable(run)
        for epoch in range(1000):
            time.sleep(0.02)  # "training"
            with stop.critical():
                w = torch.full((250_000,), float(epoch + 1))
                state = {"config": {}, "epoch": epoch + 1, "model": {"w": w}}
                save_checkpoint(run + "/last.pt", state)
                atomic_write_json(run + "/history.json", list(range(epoch + 1)))
            print(epoch + 1, flush=True)
except RunInterrupted as e:
    print(interrupt_message(run, e.signum, epoch + 1), file=sys.stderr)
    sys.exit(e.exit_code)
"""


@pytest.mark.slow  # seconds of real training: the full suite runs it, the inner loop skips it
@posix_only
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signalled_run_saves_says_and_exits_with_the_code(tmp_path, sig, code):
    """What `fit` + the CLI will do, end to end with a signal from outside: the lock stops a second
    run, the signal stops the first with 130 / 143, one stderr line names the epoch really in
    last.pt."""
    run = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-c", FAKE_FIT, str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "1"
        with pytest.raises(RunDirError, match=f"in use by another cifarkit run \\(pid {p.pid}\\)"):
            RunLock(run).acquire()
        p.stdout.readline()
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    saved = load_checkpoint(run / "last.pt")
    assert bool((saved["model"]["w"] == saved["epoch"]).all()) and saved["epoch"] >= 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"after epoch {saved['epoch']} is {run / 'last.pt'}" in err
    # both written, or neither
    assert len(json.loads((run / "history.json").read_text())) == saved["epoch"]
    assert not list(run.glob(".*.tmp")) and not (run / LOCK).exists()
    assert check_run_dir(run, overwrite=True) == "unfinished"
