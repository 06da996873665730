"""CIFAR-10 from any of its common forms, as uint8 tensors, decoded once and cached.

Sources `load_cifar10` understands:
  * None                  torchvision's copy under `root` (downloaded if absent: the Colab path);
  * a folder holding torchvision's ``cifar-10-batches-py`` (or that folder itself);
  * an ImageFolder tree ``train/<class>/*.{png,jpg}``, ``test/<class>/*`` (possibly one folder down);
  * a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` of such a tree (read in place, never extracted).
Decoded image trees and archives are cached as ``.npz`` in a user cache folder (``$CIFARKIT_CACHE``, else
``$XDG_CACHE_HOME/cifarkit``, else ``~/.cache/cifarkit``), keyed by the source's content (archives) or
file names, sizes and times (trees), so a changed source is decoded again. Bad input raises `DataError`
with one line naming the problem and the path; the cache is written atomically, never half.

Input that loads but is probably not what was meant prints one line each to stderr, starting "warning:",
on every load (cached or not): class counts other than CIFAR-10's 5,000 train / 1,000 test per class
(with "archive looks truncated" when a tar lacks its end-of-archive marker, e.g. cut between two
members), and image files in a nested folder inside a class folder, which are skipped.
`fingerprint` names the decoded content in one short string, for resume checks.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import CLASSES, CifarkitError

CACHE_VERSION = 1  # bump when the cached layout changes, so old caches are ignored
FULL_COUNTS = (5000, 1000)  # images per class in CIFAR-10's train and test splits
TRUNCATED = "archive looks truncated (no end-of-archive marker)"


class DataError(CifarkitError):
    """The data source is missing, malformed or unreadable."""


@dataclass
class Cifar10:
    """Train and test splits as uint8 images (N, 3, 32, 32) and int64 labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...] = CLASSES
    source: str = ""  # where the arrays came from, for logs
    notes: tuple[str, ...] = ()  # what decoding noticed (TRUNCATED, skipped nested folders): printed as warnings

    def __repr__(self) -> str:
        return (f"Cifar10(train={len(self.train_labels)}, test={len(self.test_labels)}, "
                f"source={self.source!r})")


def load_cifar10(source: str | os.PathLike | None = None, root: str | os.PathLike = "./data",
                 download: bool = True, progress: bool = True) -> Cifar10:
    """Load CIFAR-10 from `source` (see the module docstring); raises DataError on bad input and prints
    `data_warnings` (one line each, stderr) for input that loads but looks incomplete."""
    data = _load(source, root, download, progress)
    for line in data_warnings(data):
        print(line, file=sys.stderr)
    return data


def _load(source: str | os.PathLike | None, root: str | os.PathLike, download: bool, progress: bool) -> Cifar10:
    from .imagefiles import archive_kind, decode_archive, decode_tree, find_tree  # imports this module

    if source is None:
        return _load_torchvision(Path(root), download)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if path.is_file():
        if not archive_kind(path):
            raise DataError(f"unsupported data file {path}: expected a folder, .tar, .tar.gz, .tgz or .zip")
        return _cached(path, _archive_key(path), lambda: decode_archive(path, progress))
    if (path / "cifar-10-batches-py").is_dir():
        return _load_batches(path / "cifar-10-batches-py")
    if (path / "data_batch_1").is_file():
        return _load_batches(path)
    tree = find_tree(path)
    return _cached(tree, _tree_key(tree), lambda: decode_tree(tree, progress))


def data_warnings(data: Cifar10) -> list[str]:
    """The "warning: ..." lines for `data`: class counts other than CIFAR-10's (computed from the arrays, so
    a cached load warns too), a truncated archive, and skipped nested folders."""
    counts = [torch.bincount(y, minlength=len(data.classes)).tolist() for y in (data.train_labels, data.test_labels)]
    lines = []
    full = all(c == n for cs, n in zip(counts, FULL_COUNTS) for c in cs)
    if not full or TRUNCATED in data.notes:
        per = ", ".join(f"{split} per class {min(cs):,}..{max(cs):,}" for split, cs in zip(("train", "test"), counts))
        line = (f"warning: {data.source or 'the data'} holds {sum(counts[0]):,} train / {sum(counts[1]):,} test "
                f"images ({per}); the full CIFAR-10 has {FULL_COUNTS[0]:,} / {FULL_COUNTS[1]:,} per class")
        lines.append(line + (f"; {TRUNCATED}" if TRUNCATED in data.notes else ""))
    return lines + [f"warning: {n}" for n in data.notes if n != TRUNCATED]


def fingerprint(data: Cifar10) -> str:
    """The decoded content in one string, "<train>+<test>:<16 hex digits>": the image counts, then a SHA-256
    of the train and test images and labels (their dtypes, shapes and bytes). Equal data gives an equal
    string wherever it was loaded from; one changed pixel changes it. SHA-256 rather than BLAKE2b: CPUs
    with SHA extensions hash at ~1 GB/s (0.27 s for the 60,000 images on a loaded 2-core Xeon; BLAKE2b 0.49 s)."""
    h = hashlib.sha256()
    for t in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        a = np.ascontiguousarray(t.detach().cpu().numpy())  # no copy for the usual contiguous CPU tensors
        h.update(f"{a.dtype}{a.shape}".encode())  # so re-shaped or re-typed arrays with equal bytes differ
        h.update(memoryview(a).cast("B"))
    return f"{len(data.train_labels)}+{len(data.test_labels)}:{h.hexdigest()[:16]}"


# ---------------------------------------------------------------- torchvision pickles
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batch files but refuses every class except numpy arrays (no code from files)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    if not file.is_file():
        raise DataError(f"missing CIFAR-10 batch file: {file}")
    try:
        with open(file, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    except Exception as e:  # truncated pickle, wrong contents, wrong sizes: all one message
        raise DataError(f"corrupt CIFAR-10 batch file {file}: {type(e).__name__}: {e}") from None
    if len(x) != len(y) or len(y) == 0 or y.min() < 0 or y.max() >= len(CLASSES):
        raise DataError(f"corrupt CIFAR-10 batch file {file}: {len(x)} images, {len(y)} labels")
    return x, y


def _load_batches(folder: Path) -> Cifar10:
    parts = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _read_batch(folder / "test_batch")
    return _to_tensors(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                       test_x, test_y, source=str(folder))


def _load_torchvision(root: Path, download: bool) -> Cifar10:
    folder = root / "cifar-10-batches-py"
    if not (folder / "test_batch").is_file():
        if not download:
            raise DataError(f"CIFAR-10 not found in {root} and download is off")
        archive = root / "cifar-10-python.tar.gz"
        existed = archive.exists()
        try:
            from torchvision.datasets import CIFAR10
            CIFAR10(str(root), train=True, download=True)
        except Exception as e:
            if not existed and archive.exists():
                archive.unlink()  # a partial download would only fail its checksum next time
            raise DataError(
                f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}); without internet, point "
                "at a local copy instead: --data PATH (a folder with cifar-10-batches-py/, an ImageFolder "
                "train/ test/ tree, or a .tar.gz / .zip of one)") from None
    return _load_batches(folder)


# ---------------------------------------------------------------- cache
def cache_dir() -> Path:
    """The folder decoded datasets are cached in (created on first write)."""
    if os.environ.get("CIFARKIT_CACHE"):
        return Path(os.environ["CIFARKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifarkit"


def _archive_key(path: Path) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:archive:".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_key(tree: Path) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:tree:{tree.resolve()}".encode())
    for split in ("train", "test"):
        for root, dirs, files in sorted(os.walk(tree / split)):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                h.update(f"{root}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cached(path: Path, key: str, build) -> Cifar10:
    file = cache_dir() / f"cifar10-{key[:20]}.npz"
    if file.is_file():
        try:
            with np.load(file) as z:
                notes = tuple(str(n) for n in z["notes"]) if "notes" in z.files else ()
                return _to_tensors(z["train_x"], z["train_y"], z["test_x"], z["test_y"], source=str(path),
                                   notes=notes)
        except Exception:
            file.unlink(missing_ok=True)  # unreadable cache: decode again
    data = build()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, train_x=data.train_images.numpy(), train_y=data.train_labels.numpy(),
                         test_x=data.test_images.numpy(), test_y=data.test_labels.numpy(),
                         notes=np.array(data.notes, dtype=str))  # so a cached load warns like the first
            os.replace(tmp, file)  # atomic: readers see the old state or the whole new file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # a read-only home only costs the next load its decode time
    return data


def _to_tensors(train_x, train_y, test_x, test_y, source: str, notes: tuple[str, ...] | list[str] = ()) -> Cifar10:
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (train_x, train_y, test_x, test_y)]
    return Cifar10(t[0], t[1].long(), t[2], t[3].long(), CLASSES, source, tuple(notes))


# ---------------------------------------------------------------- subsets
def balanced_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of a class-balanced, seeded random subset of `n` items (sorted, so order is stable)."""
    if n >= len(labels):
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    picks = []
    for c, k in zip(classes.tolist(), per):
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(picks).sort().values


def split_train_val(images: torch.Tensor, labels: torch.Tensor, n_val: int, seed: int = 0):
    """Carve a class-balanced validation set of `n_val` images out of a training set."""
    if not 0 < n_val < len(labels):
        raise DataError(f"val_split must be between 1 and {len(labels) - 1}, got {n_val}")
    val = balanced_indices(labels, n_val, seed)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return images[keep], labels[keep], images[val], labels[val]
