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
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import sys
import tarfile
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import CLASSES, CifarkitError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1  # bump when the cached layout changes, so old caches are ignored


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

    def __repr__(self) -> str:
        return (f"Cifar10(train={len(self.train_labels)}, test={len(self.test_labels)}, "
                f"source={self.source!r})")


def load_cifar10(source: str | os.PathLike | None = None, root: str | os.PathLike = "./data",
                 download: bool = True, progress: bool = True) -> Cifar10:
    """Load CIFAR-10 from `source` (see the module docstring); raises DataError on bad input."""
    if source is None:
        return _load_torchvision(Path(root), download)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if path.is_file():
        if not _archive_kind(path):
            raise DataError(f"unsupported data file {path}: expected a folder, .tar, .tar.gz, .tgz or .zip")
        return _cached(path, _archive_key(path), lambda: _decode_archive(path, progress))
    if (path / "cifar-10-batches-py").is_dir():
        return _load_batches(path / "cifar-10-batches-py")
    if (path / "data_batch_1").is_file():
        return _load_batches(path)
    tree = _find_tree(path)
    return _cached(tree, _tree_key(tree), lambda: _decode_tree(tree, progress))


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


# ---------------------------------------------------------------- image trees and archives
_MEMBER = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<split>train|test)/(?P<cls>[^/]+)/(?P<file>[^/]+)$")


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _find_tree(path: Path) -> Path:
    """`path` itself if it holds train/ and test/, else its single sub-folder that does."""
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path
    subs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    if len(subs) == 1 and (subs[0] / "train").is_dir() and (subs[0] / "test").is_dir():
        return subs[0]
    missing = " and ".join(s + "/" for s in ("train", "test") if not (path / s).is_dir())
    raise DataError(f"{path} has no {missing} folder: expected an ImageFolder tree train/<class>/*, "
                    "test/<class>/* or torchvision's cifar-10-batches-py/")


def _check_classes(where: str, split: str, found: set[str]) -> None:
    if not found:
        raise DataError(f"empty split: {where} has no {split}/<class>/ images")
    if found != set(CLASSES):
        extra, missing = sorted(found - set(CLASSES)), sorted(set(CLASSES) - found)
        detail = "; ".join(s for s in (f"unexpected: {', '.join(extra)}" if extra else "",
                                       f"missing or empty: {', '.join(missing)}" if missing else "") if s)
        raise DataError(f"class folders in {where} {split}/ are not the ten CIFAR-10 classes ({detail})")


def _decode(items: list[tuple[str, bytes | Path]], progress: bool, desc: str) -> np.ndarray:
    """Decode (name, bytes-or-path) pairs to uint8 (N, 3, 32, 32), in threads (PIL releases the GIL)."""
    from PIL import Image
    from tqdm import tqdm

    def one(item: tuple[str, bytes | Path]) -> np.ndarray:
        name, blob = item
        try:
            with Image.open(io.BytesIO(blob) if isinstance(blob, bytes) else blob) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # PIL raises OSError / UnidentifiedImageError / ValueError for bad files
            raise DataError(f"cannot read image {name}: {e}") from None
        if arr.shape != (32, 32, 3):
            raise DataError(f"image {name} is {arr.shape[1]}x{arr.shape[0]}, expected 32x32")
        return arr

    out = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress, mininterval=2.0, ncols=110,
                   file=sys.stdout)
        for i, arr in enumerate(pool.map(one, items, chunksize=256)):
            out[i] = arr
            bar.update(1)
        bar.close()
    return out.transpose(0, 3, 1, 2).copy()  # NHWC -> NCHW


def _collect(entries: list[tuple[str, str, str, bytes | Path]], where: str, progress: bool) -> Cifar10:
    """entries: (split, class, name, payload). Sorted by name so the order is independent of the source."""
    arrays = {}
    for split in ("train", "test"):
        rows = sorted((e for e in entries if e[0] == split), key=lambda e: (CLASSES.index(e[1])
                                                                           if e[1] in CLASSES else -1, e[2]))
        _check_classes(where, split, {e[1] for e in rows})
        x = _decode([(e[2], e[3]) for e in rows], progress, f"decoding {split} images (once; cached after)")
        arrays[split] = (x, np.array([CLASSES.index(e[1]) for e in rows], dtype=np.int64))
    return _to_tensors(*arrays["train"], *arrays["test"], source=where)


def _decode_tree(tree: Path, progress: bool) -> Cifar10:
    entries = []
    for split in ("train", "test"):
        for cls_dir in sorted(p for p in (tree / split).iterdir() if p.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.is_file() and _is_image(f.name):
                    entries.append((split, cls_dir.name, str(f), f))
    return _collect(entries, str(tree), progress)


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    return "zip" if name.endswith(".zip") else None


def _decode_archive(path: Path, progress: bool) -> Cifar10:
    entries = []
    prefixes = set()
    try:
        if _archive_kind(path) == "tar":
            with tarfile.open(path, "r:*") as tf:
                for m in tf:  # streams: a .tar.gz is read once, front to back
                    match = _MEMBER.match(m.name.lstrip("./"))
                    if m.isfile() and match and _is_image(m.name):
                        prefixes.add(match["prefix"])
                        entries.append((match["split"], match["cls"], f"{path}:{m.name}",
                                        tf.extractfile(m).read()))
        else:
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    match = _MEMBER.match(name)
                    if match and _is_image(name) and "__MACOSX" not in name:
                        prefixes.add(match["prefix"])
                        entries.append((match["split"], match["cls"], f"{path}:{name}", zf.read(name)))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DataError(f"truncated or corrupt archive {path}: {type(e).__name__}: {e}") from None
    if len(prefixes) > 1:
        raise DataError(f"archive {path} holds several train/ test/ trees: {', '.join(sorted(prefixes))}")
    return _collect(entries, str(path), progress)


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
                return _to_tensors(z["train_x"], z["train_y"], z["test_x"], z["test_y"], source=str(path))
        except Exception:
            file.unlink(missing_ok=True)  # unreadable cache: decode again
    data = build()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, train_x=data.train_images.numpy(), train_y=data.train_labels.numpy(),
                         test_x=data.test_images.numpy(), test_y=data.test_labels.numpy())
            os.replace(tmp, file)  # atomic: readers see the old state or the whole new file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # a read-only home only costs the next load its decode time
    return data


def _to_tensors(train_x, train_y, test_x, test_y, source: str) -> Cifar10:
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (train_x, train_y, test_x, test_y)]
    return Cifar10(t[0], t[1].long(), t[2], t[3].long(), CLASSES, source)


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
