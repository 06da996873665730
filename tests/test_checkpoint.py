"""checkpoint.py: one-line errors for failed writes (the previous file intact) and for unreadable
checkpoints."""

import errno
import io
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cifarkit.atomic import WriteError, atomic_write, atomic_write_json, atomic_write_text
from cifarkit.base import CifarkitError
from cifarkit.runfolder.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def ckpt_state(epoch: int, numel: int = 4) -> dict:
    return {"config": {}, "model": {"w": torch.full((numel,), float(epoch))}, "epoch": epoch}


def assert_intact(path: Path, epoch: int) -> None:
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == epoch and bool((ckpt["model"]["w"] == epoch).all())
    assert not list(path.parent.glob(".*.tmp")), "a temp file was left behind"


def one_line(e: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


# ------------------------------------------------------------------------------ failed writes,
# injected
def fail_with(code: int):
    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    "code, needle",
    [
        (
            errno.ENOSPC,
            "no space left on device while writing {path}; the previous checkpoint is intact",
        ),
        (
            errno.EDQUOT,
            "disk quota exceeded while writing {path}; the previous checkpoint is intact",
        ),
        (errno.EROFS, "is on a read-only file system: cannot write last.pt"),
        (errno.EACCES, "permission denied writing {path}"),
        (errno.EPERM, "permission denied writing {path}"),
        (errno.EIO, "cannot write {path}: Input/output error; the previous checkpoint is intact"),
    ],
)
def test_fsync_failure_is_one_line_and_keeps_the_old_checkpoint(
    tmp_path, monkeypatch, code, needle
):
    path = tmp_path / "last.pt"
    save_checkpoint(path, ckpt_state(1))
    monkeypatch.setattr("cifarkit.atomic.os.fsync", fail_with(code))
    with pytest.raises(WriteError) as e:
        save_checkpoint(path, ckpt_state(2))
    one_line(e, needle.format(path=path))
    assert e.value.errno == code and isinstance(e.value, CifarkitError)
    monkeypatch.undo()
    assert_intact(path, 1)


class FillsUp(io.RawIOBase):
    """A file on a disk with `room` bytes left: writes beyond it fail with ENOSPC, as a real full
    disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, data):
        n = min(len(data), self.room)
        if n == 0 and len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.f.write(bytes(data[:n]))

    def fileno(self):
        return self.f.fileno()

    def close(self):
        super().close()
        self.f.close()


@pytest.mark.parametrize("room", [0, 100, 5000])
def test_torch_save_on_a_full_disk_says_no_space(tmp_path, monkeypatch, room):
    """torch.save turns the ENOSPC into RuntimeError('[enforce fail at inline_container.cc]
    unexpected pos'); the message must still say no space left."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, ckpt_state(1))
    real_fdopen = os.fdopen
    monkeypatch.setattr(
        "cifarkit.atomic.os.fdopen",
        lambda fd, mode: io.BufferedWriter(FillsUp(real_fdopen(fd, mode, buffering=0), room)),
    )
    with pytest.raises(WriteError) as e:
        save_checkpoint(path, ckpt_state(2, numel=100_000))
    one_line(e, f"no space left on device while writing {path}; the previous checkpoint is intact")
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert_intact(path, 1)


def test_torch_writer_failure_without_errno(tmp_path, monkeypatch):
    """When torch lost the OSError altogether, the free space decides: full disk -> no space, else
    'cannot write'."""

    def torn(f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(WriteError) as e:
        atomic_write(tmp_path / "last.pt", torn)
    one_line(e, f"cannot write {tmp_path / 'last.pt'}: Input/output error")
    monkeypatch.setattr("cifarkit.atomic.shutil.disk_usage", lambda p: SimpleNamespace(free=0))
    with pytest.raises(WriteError) as e:
        atomic_write(tmp_path / "last.pt", torn)
    one_line(e, "no space left on device")
    assert list(tmp_path.iterdir()) == []


def test_text_files_say_previous_version_or_not_created(tmp_path, monkeypatch):
    monkeypatch.setattr("cifarkit.atomic.os.fsync", fail_with(errno.ENOSPC))
    with pytest.raises(WriteError) as e:
        atomic_write_json(tmp_path / "results.json", {"a": 1})
    one_line(e, f"writing {tmp_path / 'results.json'}; it was not created")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    atomic_write_text(tmp_path / "history.csv", "epoch\n1\n")
    monkeypatch.setattr("cifarkit.atomic.os.fsync", fail_with(errno.ENOSPC))
    with pytest.raises(WriteError) as e:
        atomic_write_text(tmp_path / "history.csv", "epoch\n1\n2\n")
    one_line(e, "the previous version is intact")
    assert (tmp_path / "history.csv").read_text() == "epoch\n1\n"


def test_failures_before_and_after_the_write(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint(path, ckpt_state(1))
    # cannot create the temp
    monkeypatch.setattr("cifarkit.atomic.tempfile.mkstemp", fail_with(errno.EACCES))
    with pytest.raises(WriteError) as e:
        save_checkpoint(path, ckpt_state(2))
    one_line(e, f"permission denied writing {path}")
    monkeypatch.undo()
    # cannot rename it into place
    monkeypatch.setattr("cifarkit.atomic.os.replace", fail_with(errno.EIO))
    with pytest.raises(WriteError):
        save_checkpoint(path, ckpt_state(2))
    monkeypatch.undo()
    assert_intact(path, 1)


def test_bugs_are_not_disguised_as_disk_errors(tmp_path):
    path = tmp_path / "x.txt"

    def buggy(f):
        f.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="^boom$"):
        atomic_write(path, buggy)
    with pytest.raises(TypeError):
        atomic_write(path, lambda f: f.write("not bytes"))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_temp_file(tmp_path):
    def interrupted(f):
        f.write(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "last.pt", interrupted)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ failed writes, for
# real
@pytest.fixture
def tiny_tmpfs(mount_tmpfs):
    """A real 1 MiB tmpfs (conftest's mount_tmpfs); skipped where mounting is not permitted."""
    return mount_tmpfs(1 << 20)


def test_real_full_disk(tiny_tmpfs):
    path = tiny_tmpfs / "last.pt"
    save_checkpoint(path, ckpt_state(1, numel=50_000))  # 200 kB: fits
    with pytest.raises(WriteError) as e:
        save_checkpoint(path, ckpt_state(2, numel=500_000))  # 2 MB: does not
    one_line(e, f"no space left on device while writing {path}; the previous checkpoint is intact")
    assert_intact(path, 1)
    with pytest.raises(WriteError) as e:
        atomic_write_text(tiny_tmpfs / "history.csv", "x" * 2_000_000)
    one_line(e, "no space left on device", "history.csv", "it was not created")
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["last.pt"]
    # space came back with the temp files: writes work again
    save_checkpoint(path, ckpt_state(3, numel=50_000))
    assert_intact(path, 3)


def test_real_read_only_mount(tiny_tmpfs):
    path = tiny_tmpfs / "last.pt"
    save_checkpoint(path, ckpt_state(1))
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True, capture_output=True)
    with pytest.raises(WriteError) as e:
        save_checkpoint(path, ckpt_state(2))
    one_line(e, f"{tiny_tmpfs} is on a read-only file system: cannot write last.pt")
    assert e.value.errno == errno.EROFS
    assert load_checkpoint(path)["epoch"] == 1


# ------------------------------------------------------------------------------ unreadable
# checkpoints
class Custom:
    def __init__(self):
        self.a = 1


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def assert_refused(path: Path, needle: str) -> str:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = one_line(e, str(path), needle)
    assert "In PyTorch 2.6" not in msg and "weights_only` argument" not in msg and len(msg) < 250
    return msg


def test_random_bytes_empty_and_text(tmp_path):
    for name, data in (
        ("random.pt", os.urandom(5000)),
        ("empty.pt", b""),
        ("text.pt", b"hello"),
        ("zeros.pt", b"\0" * 100),
    ):
        (tmp_path / name).write_bytes(data)
        assert_refused(tmp_path / name, "cannot read checkpoint")
        assert "not a torch file, or truncated" in assert_refused(tmp_path / name, "")


def test_truncated_checkpoint(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, ckpt_state(1, numel=100_000))
    data = good.read_bytes()
    for cut in (100, 5000, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        assert_refused(bad, "cannot read checkpoint")


@pytest.mark.parametrize("obj, name", [(Custom(), "Custom"), (Payload(), "system")])
def test_pickled_code_is_refused_in_one_line(tmp_path, obj, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "cifarkit-checkpoint", "version": 1, "x": obj}, evil)
    msg = assert_refused(evil, "cannot read checkpoint")
    assert "pickled code" in msg and name in msg and "weights_only=True" in msg
    assert not (tmp_path / "PWNED").exists()


def test_plain_pickle_prints_no_warning(tmp_path, recwarn):
    import pickle

    # draws torch's protocol warning
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert_refused(tmp_path / "p.pt", "not a torch file")
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_mmap_load_reads_the_epoch(tmp_path):
    save_checkpoint(tmp_path / "last.pt", ckpt_state(7))
    assert load_checkpoint(tmp_path / "last.pt", mmap=True)["epoch"] == 7


def test_export_writes_only_a_regular_file_and_clears_what_a_killed_export_left(tmp_path):
    from cifarkit.runfolder.checkpoint import export_checkpoint

    src = tmp_path / "last.pt"
    save_checkpoint(src, {**ckpt_state(3), "config": {}, "model": {}})
    out = tmp_path / "share"
    out.mkdir()
    left = out / ".slim.pt.k1ll3d00.tmp"  # what SIGKILL during an earlier export leaves
    left.write_bytes(b"half a checkpoint")
    export_checkpoint(src, out / "slim.pt")
    assert load_checkpoint(out / "slim.pt")["epoch"] == 3 and not left.exists()
    before = os.stat("/dev/null")
    with pytest.raises(WriteError) as e:
        export_checkpoint(src, "/dev/null")
    one_line(e, "/dev/null is not a regular file")
    assert os.stat("/dev/null").st_rdev == before.st_rdev  # the device is still a device
