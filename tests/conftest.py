"""Shared fixtures: tiny CIFAR-10-shaped datasets that the tests write themselves, in every
format."""

from __future__ import annotations

import io
import linecache
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.base import CLASSES


def _data_copy() -> Path:
    """The JPEG copy the integration tests read (their facts are that copy's, as
    ../shared/data/README.md states them): $CIFARKIT_DATA where it names a file of that name (a GPU
    machine carries it elsewhere), else ../shared/data/cifar10-jpg.tar.gz beside the checkout."""
    given = Path(os.environ.get("CIFARKIT_DATA") or "")
    if given.name == "cifar10-jpg.tar.gz" and given.is_file():
        return given.resolve()
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpg.tar.gz"


SHARED_ARCHIVE = _data_copy()

# Why a test that needs the data copy skipped, in one line: where it looked, and how to provide one.
NO_DATA = (
    f"needs the CIFAR-10 copy: looked for {SHARED_ARCHIVE.resolve()} (put it there, or set "
    "CIFARKIT_DATA to a copy named cifar10-jpg.tar.gz)"
)


def present_devices() -> list[str]:
    """The devices a test of a device-independent promise runs on: the CPU always, CUDA where
    torch sees a GPU."""
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


DEVICES = present_devices()


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each device present, by name: a test that takes it holds its promise on every one. A test of
    a CPU-only mechanism says device="cpu" instead."""
    return request.param


_kernel_cells = iter(range(10**6))


def kernel_cell(source: str) -> dict:
    """Run `source` as a Jupyter kernel runs a notebook cell: its code in __main__, its source only
    in linecache (where inspect finds a method's source, as it does in a kernel); its namespace."""
    name = f"<ipython-input-{next(_kernel_cells)}>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    ns = {"__name__": "__main__"}
    exec(compile(source, name, "exec"), ns)
    return ns


def have_data() -> bool:
    return SHARED_ARCHIVE.exists()


def pytest_collection_modifyitems(config, items):
    """The notebook's re-execution (nbval items, which cannot carry a decorator) is marked slow,
    like every Python test that trains for seconds (`@pytest.mark.slow`, or `pytestmark` for a whole
    file), and skipped in one line where no data copy is there to run it on (offline, torchvision
    cannot download).
    """
    no_data = not have_data() and not os.environ.get("CIFARKIT_DATA")
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
            if no_data:
                item.add_marker(pytest.mark.skip(reason=NO_DATA))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own empty decode cache, so no test sees another's (or the user's)
    cache."""
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_arrays(n_train_per_class: int = 3, n_test_per_class: int = 2, seed: int = 0):
    """Images whose class is visible in the pixels (a class-specific colour plus noise), uint8
    NHWC."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        labels = np.repeat(np.arange(10), n)
        base = (labels[:, None] * 25 + np.array([0, 80, 160])) % 256
        imgs = base[:, None, None, :] + rng.integers(0, 20, size=(len(labels), 32, 32, 3))
        out[split] = (imgs.clip(0, 255).astype(np.uint8), labels)
    return out


def write_tree(root: Path, fmt: str = "png", arrays=None) -> Path:
    """ImageFolder layout root/{train,test}/<class>/<i>.<fmt>; returns root."""
    arrays = arrays or tiny_arrays()
    for split, (imgs, labels) in arrays.items():
        for i, (img, label) in enumerate(zip(imgs, labels)):
            d = root / split / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.{fmt}", quality=95)
    return root


def write_archive(tree: Path, dest: Path) -> Path:
    """Pack a tree (under a top folder, like most downloads) as .tar / .tar.gz / .zip by `dest`'s
    suffix."""
    if dest.name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w") as zf:
            for f in sorted(tree.rglob("*")):
                if f.is_file():
                    zf.write(f, f"cifar/{f.relative_to(tree)}")
    else:
        with tarfile.open(dest, "w:gz" if dest.name.endswith(".gz") else "w") as tf:
            tf.add(tree, arcname="cifar")
    return dest


def write_batches(folder: Path, arrays=None) -> Path:
    """torchvision's cifar-10-batches-py layout: five training batches and one test batch."""
    arrays = arrays or tiny_arrays(n_train_per_class=5)
    folder.mkdir(parents=True, exist_ok=True)
    (tx, ty), (vx, vy) = arrays["train"], arrays["test"]
    flat = lambda x: x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # noqa: E731  NHWC -> rows of CHW
    for i, sel in enumerate(np.array_split(np.arange(len(ty)), 5)):  # contiguous, in order
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": flat(tx[sel]), "labels": ty[sel].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": flat(vx), "labels": vy.tolist()}, f)
    return folder


@pytest.fixture
def tree(tmp_path) -> Path:
    return write_tree(tmp_path / "tree", "png")


@pytest.fixture
def learnable_data():
    """A Cifar10 of 200 train / 100 test images whose classes a small network learns in a few
    epochs (a new one for each test)."""
    return make_learnable_data()


def make_learnable_data():
    """`learnable_data`, for fixtures of a wider scope."""
    import torch

    from cifarkit.data.dataset import Cifar10

    a = tiny_arrays(20, 10, seed=1)
    t = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy())  # noqa: E731
    return Cifar10(
        t(a["train"][0]),
        torch.from_numpy(a["train"][1]),
        t(a["test"][0]),
        torch.from_numpy(a["test"][1]),
        CLASSES,
        "synthetic",
    )


def interrupt_in_epoch_2(monkeypatch):
    """Make training raise KeyboardInterrupt (as Ctrl-C would) when epoch 2 starts; returns the real
    loop."""
    import cifarkit.training.trainer as trainer_mod

    real = trainer_mod.train_one_epoch

    def interrupted(*a, **k):
        if k["epoch"] == 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", interrupted)
    return real


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(bytes, read_only=False) -> a fresh real tmpfs; skipped where mounting is not
    permitted."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to mount a tmpfs")
    mounted = []

    def mount(size: int, read_only: bool = False, prepare=None) -> Path:
        mnt = tmp_path / f"mnt{len(mounted)}"
        mnt.mkdir()
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
        ).returncode:
            pytest.skip("mount -t tmpfs is not permitted here")
        mounted.append(mnt)
        if prepare is not None:
            prepare(mnt)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
