"""CIFAR-10 from any of its common forms, as uint8 tensors, decoded once and cached.

Sources `load_cifar10` understands:
  * None                  torchvision's copy under `root` (downloaded if absent: the Colab path);
  * a folder holding torchvision's ``cifar-10-batches-py`` (or that folder itself);
  * an ImageFolder tree ``train/<class>/*.{png,jpg}``, ``test/<class>/*`` (possibly one
    folder down);
  * a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` of such a tree (read in place, never extracted).
Decoded image trees and archives are cached as ``.npz`` in a user cache folder (``$CIFARKIT_CACHE``,
else ``$XDG_CACHE_HOME/cifarkit``, else ``~/.cache/cifarkit``), keyed by the source's content
(archives) or file names, sizes and times (trees), so a changed source is decoded again. Bad input
raises `DataError` with one line naming the problem and the path; the cache is written atomically,
never half.

Input that loads but is probably not what was meant prints one line each to stderr, starting
"warning:", on every load (cached or not): class counts other than CIFAR-10's 5,000 train / 1,000
test per class (with "archive looks truncated" when a tar lacks its end-of-archive marker, e.g. cut
between two members), and image files in a nested folder inside a class folder, which are skipped.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import sys
from pathlib import Path

import numpy as np

from ..atomic import WriteError, atomic_write
from ..base import CLASSES, cache_dir, show_path
from .dataset import Cifar10, DataError, data_warnings, fingerprint, to_tensors
from .imagefiles import archive_kind, decode_archive, decode_tree, find_tree

# bump when the cached layout or the decoding changes, so old caches are ignored (2: 16-bit, alpha,
# EXIF; 3: the cache records its source key and its arrays' fingerprint)
CACHE_VERSION = 3


def load_cifar10(
    source: str | os.PathLike | None = None,
    root: str | os.PathLike = "./data",
    download: bool = True,
    progress: bool = True,
) -> Cifar10:
    """Load CIFAR-10 from `source` (see the module docstring); raises DataError on bad input and
    prints `data_warnings` (one line each, stderr) for input that loads but looks incomplete."""
    data = _load(source, root, download, progress)
    for line in data_warnings(data):
        print(line, file=sys.stderr)
    return data


def _load(
    source: str | os.PathLike | None, root: str | os.PathLike, download: bool, progress: bool
) -> Cifar10:
    if source is None:
        return _load_torchvision(Path(root), download)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if path.is_file():
        if not archive_kind(path):
            raise DataError(
                f"unsupported data file {path}: expected a folder, .tar, .tar.gz, .tgz or .zip"
            )
        return _cached(path, _archive_key(path), lambda: decode_archive(path, progress))
    if (path / "cifar-10-batches-py").is_dir():
        return _load_batches(path / "cifar-10-batches-py")
    if (path / "data_batch_1").is_file():
        return _load_batches(path)
    tree = find_tree(path)
    return _cached(tree, _tree_key(tree), lambda: decode_tree(tree, progress))


# ---------------------------------------------------------------- torchvision pickles
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batch files but refuses every class except numpy arrays (no code from
    files)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

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
    return to_tensors(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        test_x,
        test_y,
        source=str(folder),
    )


def _load_torchvision(root: Path, download: bool) -> Cifar10:
    folder = root / "cifar-10-batches-py"
    if not (folder / "test_batch").is_file():
        if not download:
            raise DataError(f"CIFAR-10 not found in {root} and download is off")
        archive = root / "cifar-10-python.tar.gz"
        existed, made = archive.exists(), not root.exists()
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(root), train=True, download=True)
        except Exception as e:
            if not existed and archive.exists():
                archive.unlink()  # a partial download would only fail its checksum next time
            if made:
                try:
                    root.rmdir()  # the folder the download made, if it stayed empty
                except OSError:
                    pass
            raise DataError(
                f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}); without"
                " internet, point at a local copy instead: --data PATH or CIFARKIT_DATA=PATH for"
                " the command line and the notebook, TrainConfig(data=PATH) in Python (a folder"
                " with cifar-10-batches-py/, an ImageFolder train/ test/ tree, or a .tar.gz / .zip"
                " of one)"
            ) from None
    return _load_batches(folder)


# ---------------------------------------------------------------- cache
def _archive_key(path: Path) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:archive:".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_key(tree: Path) -> str:
    """A hash of every file's path, size and time under train/ and test/. Paths go in as the bytes
    the file system holds (a name need not be valid UTF-8). A symbolic link that loops or leads
    nowhere is refused in one line, naming it."""
    h = hashlib.sha256(os.fsencode(f"v{CACHE_VERSION}:tree:{tree.resolve()}"))
    for split in ("train", "test"):
        # followlinks: a class folder may be a symbolic link; what it holds is what decode_tree
        # reads
        for root, dirs, files in os.walk(tree / split, followlinks=True, onerror=_walk_error):
            if os.path.islink(root):  # a link to a folder above it would be walked forever
                real, parent = os.path.realpath(root), os.path.realpath(os.path.dirname(root))
                if parent == real or parent.startswith(real.rstrip(os.sep) + os.sep):
                    raise DataError(
                        f"{show_path(root)} is a symbolic link to a folder above it (a loop):"
                        " remove it"
                    )
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except OSError as e:
                    raise _link_error(path, e) from None
                h.update(os.fsencode(f"{path}:{st.st_size}:{st.st_mtime_ns}\n"))
    return h.hexdigest()


def _link_error(path: str, e: OSError) -> DataError:
    if e.errno == errno.ELOOP:
        return DataError(
            f"{show_path(path)} is a symbolic link that loops back on itself: remove it"
        )
    if e.errno == errno.ENOENT and os.path.islink(path):
        return DataError(
            f"{show_path(path)} is a symbolic link to {show_path(os.readlink(path))}, which does"
            " not exist: remove it or restore its target"
        )
    return DataError(f"cannot read {show_path(path)}: {e.strerror or e}")


def _walk_error(e: OSError) -> None:
    if e.errno == errno.ELOOP:  # other unreadable folders are skipped, as decode_tree skips them
        raise _link_error(e.filename or "?", e)


def _cached(path: Path, key: str, build) -> Cifar10:
    """The decoded data of `path`, from the cache when the cache file is this source's: it records
    the source's key (for an archive, a hash of its bytes; for a tree, of its files' names, sizes
    and times) and the fingerprint of the arrays it holds, and both must match; anything else (a
    file of another dataset under this name, arrays changed since, a truncated file) is decoded
    again from the source, with one line saying so."""
    file = cache_dir() / f"cifar10-{key[:20]}.npz"
    if file.is_file():
        try:
            with np.load(file) as z:
                notes = tuple(str(n) for n in z["notes"]) if "notes" in z.files else ()
                data = to_tensors(
                    z["train_x"],
                    z["train_y"],
                    z["test_x"],
                    z["test_y"],
                    source=str(path),
                    notes=notes,
                )
                stored_key = str(z["key"]) if "key" in z.files else ""
                stored = str(z["fingerprint"]) if "fingerprint" in z.files else ""
            if stored_key == key and stored == fingerprint(data):
                return data
            print(
                f"warning: the decoded cache {show_path(file)} does not hold {show_path(path)}'s"
                " images: decoding them again"
            )
        except Exception:  # noqa: BLE001 - unreadable cache (truncated, bit-flipped): decode again
            pass
        try:
            file.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache folder: decode every time, the source is still read right
    data = build()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            file,
            lambda f: np.savez(
                f,
                train_x=data.train_images.numpy(),
                train_y=data.train_labels.numpy(),
                test_x=data.test_images.numpy(),
                test_y=data.test_labels.numpy(),
                # a cached load warns too
                notes=np.array(data.notes, dtype=str),
                # what the cache is checked against when read: its source, its own arrays
                key=np.array(key),
                fingerprint=np.array(fingerprint(data)),
            ),
        )
    except (OSError, WriteError):
        pass  # a read-only home only costs the next load its decode time
    return data
