"""CIFAR-10 from image files: an ImageFolder tree ``train/<class>/*``, ``test/<class>/*`` or a
``.tar``, ``.tar.gz`` / ``.tgz`` or ``.zip`` of one, decoded to uint8 arrays (`load_cifar10` caches
the result).

Archives are read in place, front to back, never extracted. What loads but looks wrong becomes a
note (printed by `dataset.data_warnings`): a tar without its end-of-archive marker (cut between two
members, which tarfile reads without complaint) and image files in a nested folder inside a class
folder (skipped).
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..base import CLASSES
from .dataset import TRUNCATED, Cifar10, DataError, to_tensors
from .decode import MAX_FILE_BYTES, open_rgb, too_large

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_MEMBER = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<split>train|test)/(?P<cls>[^/]+)/(?P<file>[^/]+)$")
_NESTED = re.compile(
    r"^(?P<prefix>(?:.*/)?)(?P<split>train|test)/(?P<cls>[^/]+)/(?P<sub>.+)/(?P<file>[^/]+)$"
)


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def find_tree(path: Path) -> Path:
    """`path` itself if it holds train/ and test/, else its single sub-folder that does."""
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path
    subs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    if len(subs) == 1 and (subs[0] / "train").is_dir() and (subs[0] / "test").is_dir():
        return subs[0]
    missing = " and ".join(s + "/" for s in ("train", "test") if not (path / s).is_dir())
    raise DataError(
        f"{path} has no {missing} folder: expected an ImageFolder tree train/<class>/*, "
        "test/<class>/* or torchvision's cifar-10-batches-py/"
    )


def _check_classes(where: str, split: str, found: set[str]) -> None:
    if not found:
        raise DataError(f"empty split: {where} has no {split}/<class>/ images")
    if found != set(CLASSES):
        extra, missing = sorted(found - set(CLASSES)), sorted(set(CLASSES) - found)
        detail = "; ".join(
            s
            for s in (
                f"unexpected: {', '.join(extra)}" if extra else "",
                f"missing or empty: {', '.join(missing)}" if missing else "",
            )
            if s
        )
        raise DataError(
            f"class folders in {where} {split}/ are not the ten CIFAR-10 classes ({detail})"
        )


def _decode(items: list[tuple[str, bytes | Path]], progress: bool, desc: str) -> np.ndarray:
    """Decode (name, bytes-or-path) pairs to uint8 (N, 3, 32, 32), in threads (PIL releases the
    GIL)."""
    from tqdm import tqdm

    def one(item: tuple[str, bytes | Path]) -> np.ndarray:
        name, blob = item
        im, _ = open_rgb(blob, name, size=(32, 32))  # 16-bit, alpha, EXIF... as a viewer shows them
        return np.asarray(im)

    out = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    bar = tqdm(
        total=len(items),
        desc=desc,
        unit="img",
        disable=not progress,
        mininterval=2.0,
        ncols=110,
        file=sys.stdout,
    )
    try:
        for i, arr in enumerate(pool.map(one, items, chunksize=64)):
            out[i] = arr
            bar.update(1)
    # Ctrl-C or a bad image: drop the queued chunks at once (a worker finishes at most 64 images)
    finally:
        bar.close()
        pool.shutdown(wait=False, cancel_futures=True)
    return out.transpose(0, 3, 1, 2).copy()  # NHWC -> NCHW


def _collect(
    entries: list[tuple[str, str, str, bytes | Path]], where: str, progress: bool, notes: list[str]
) -> Cifar10:
    """entries: (split, class, name, payload). Sorted by name so the order is independent of the
    source."""
    arrays = {}
    for split in ("train", "test"):
        rows = sorted(
            (e for e in entries if e[0] == split),
            key=lambda e: (CLASSES.index(e[1]) if e[1] in CLASSES else -1, e[2]),
        )
        _check_classes(where, split, {e[1] for e in rows})
        x = _decode(
            [(e[2], e[3]) for e in rows], progress, f"decoding {split} images (once; cached after)"
        )
        arrays[split] = (x, np.array([CLASSES.index(e[1]) for e in rows], dtype=np.int64))
    return to_tensors(*arrays["train"], *arrays["test"], source=where, notes=notes)


def _nested_note(where: str, count: int) -> str:
    return (
        f"skipped {count:,} images in the nested folder {where} (only images directly in"
        " train/<class>/ and test/<class>/ are read)"
    )


def decode_tree(tree: Path, progress: bool) -> Cifar10:
    entries, notes = [], []
    for split in ("train", "test"):
        for cls_dir in sorted(p for p in (tree / split).iterdir() if p.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.is_file() and _is_image(f.name):
                    # open_rgb refuses an oversized file
                    entries.append((split, cls_dir.name, str(f), f))
                elif f.is_dir() and cls_dir.name in CLASSES:
                    n = sum(1 for p in f.rglob("*") if p.is_file() and _is_image(p.name))
                    if n:
                        notes.append(_nested_note(f"{f}/", n))
    return _collect(entries, str(tree), progress, notes)


def _read_bounded(name: str, size: int, read) -> bytes:
    """read() a member whose header says `size` bytes, refusing one too large to be an image before
    reading."""
    if size > MAX_FILE_BYTES:
        raise too_large(name, size)
    return read()


def archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    return "zip" if name.endswith(".zip") else None


def decode_archive(path: Path, progress: bool) -> Cifar10:
    entries, nested, notes = [], [], []
    prefixes = set()

    def take(name: str, label: str, read) -> None:
        """Keep member `name` (read() gives its bytes) if it is a class image; note it if nested
        deeper."""
        match = _MEMBER.match(name)
        if match:
            prefixes.add(match["prefix"])
            entries.append((match["split"], match["cls"], f"{path}:{label}", read()))
        elif (deep := _NESTED.match(name)) and deep["cls"] in CLASSES:
            nested.append(deep)

    try:
        if archive_kind(path) == "tar":
            with tarfile.open(path, "r:*") as tf:
                for m in tf:  # read front to back, so a .tar.gz is decompressed once
                    if m.isfile() and _is_image(m.name):
                        take(
                            m.name.lstrip("./"),
                            m.name,
                            lambda: _read_bounded(
                                f"{path}:{m.name}", m.size, lambda: tf.extractfile(m).read()
                            ),
                        )
                # tarfile stops quietly at the end of the data; a complete tar ends with a zero
                # block there, which tarfile has just read (so the position is a block past the last
                # header offset)
                if tf.fileobj.tell() < tf.offset + tarfile.BLOCKSIZE:
                    notes.append(TRUNCATED)
        else:
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    if _is_image(name) and "__MACOSX" not in name:
                        take(
                            name,
                            name,
                            lambda: _read_bounded(
                                f"{path}:{name}", zf.getinfo(name).file_size, lambda: zf.read(name)
                            ),
                        )
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DataError(f"truncated or corrupt archive {path}: {type(e).__name__}: {e}") from None
    if len(prefixes) > 1:
        raise DataError(
            f"archive {path} holds several train/ test/ trees: {', '.join(sorted(prefixes))}"
        )
    folders: dict[str, int] = {}
    for deep in nested:
        if deep["prefix"] in prefixes:
            key = (
                f"{path}:{deep['prefix']}{deep['split']}/{deep['cls']}/{deep['sub'].split('/')[0]}/"
            )
            folders[key] = folders.get(key, 0) + 1
    notes += [_nested_note(k, n) for k, n in folders.items()]
    return _collect(entries, str(path), progress, notes)
