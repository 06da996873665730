"""load_cifar10 on tiny datasets written in every supported format, the cache, and every bad
input."""

import gzip
import os
import re
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import cifarkit.data.imagefiles as imagefiles
from cifarkit.base import CLASSES
from cifarkit.data.dataset import Cifar10, DataError, data_warnings, fingerprint
from cifarkit.data.sources import load_cifar10
from cifarkit.data.splits import balanced_indices, split_train_val

from conftest import tiny_arrays, write_archive, write_batches, write_tree


def expected():
    a = tiny_arrays()
    return {
        s: (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y))
        for s, (x, y) in a.items()
    }


def assert_exact(d):
    exp = expected()
    assert torch.equal(d.train_images, exp["train"][0]) and torch.equal(
        d.train_labels, exp["train"][1]
    )
    assert torch.equal(d.test_images, exp["test"][0]) and torch.equal(d.test_labels, exp["test"][1])
    assert d.classes == CLASSES


def test_png_tree_loads_exactly(tree):
    d = load_cifar10(tree, progress=False)
    assert d.train_images.dtype == torch.uint8 and d.train_images.shape == (30, 3, 32, 32)
    assert_exact(d)


def test_jpeg_tree_loads_close(tmp_path):
    d = load_cifar10(write_tree(tmp_path / "jpg", "jpg"), progress=False)
    exp = expected()
    assert torch.equal(d.train_labels, exp["train"][1])
    assert (d.train_images.float() - exp["train"][0].float()).abs().mean() < 6  # JPEG is lossy


def test_tree_one_folder_down(tmp_path, tree):
    shutil.move(str(tree), str(tmp_path / "outer" / "CIFAR-10-images"))
    assert_exact(load_cifar10(tmp_path / "outer", progress=False))


@pytest.mark.parametrize("name", ["c.tar", "c.tar.gz", "c.tgz", "c.zip"])
def test_archives_load_exactly(tmp_path, tree, name):
    assert_exact(load_cifar10(write_archive(tree, tmp_path / name), progress=False))


def test_torchvision_batches_folder(tmp_path):
    write_batches(tmp_path / "root" / "cifar-10-batches-py", tiny_arrays())
    assert_exact(load_cifar10(tmp_path / "root"))  # the folder holding cifar-10-batches-py
    assert_exact(load_cifar10(tmp_path / "root" / "cifar-10-batches-py"))  # or the folder itself


def test_default_source_uses_existing_torchvision_copy_without_download(tmp_path, monkeypatch):
    write_batches(tmp_path / "cifar-10-batches-py", tiny_arrays())
    monkeypatch.setattr(
        "torchvision.datasets.CIFAR10.download", lambda self: pytest.fail("downloaded")
    )
    assert_exact(load_cifar10(None, root=tmp_path))


def test_failed_download_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    def refuse(*a, **k):
        # what an aborted download leaves
        (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", refuse)
    with pytest.raises(
        DataError,
        match=r"could not download CIFAR-10.*--data PATH.*CIFARKIT_DATA.*TrainConfig\(data=PATH\)",
    ):
        load_cifar10(None, root=tmp_path)
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()  # the partial file is gone
    with pytest.raises(DataError):
        load_cifar10(None, root=tmp_path / "data")
    assert not (tmp_path / "data").exists()  # no empty data/ folder left behind


def test_second_load_comes_from_cache(tree, private_cache, monkeypatch):
    first = load_cifar10(tree, progress=False)
    assert len(list(private_cache.glob("*.npz"))) == 1
    monkeypatch.setattr(imagefiles, "_decode", lambda *a, **k: pytest.fail("decoded again"))
    second = load_cifar10(tree, progress=False)
    assert torch.equal(first.train_images, second.train_images)


def test_changed_source_is_decoded_again(tree, private_cache):
    load_cifar10(tree, progress=False)
    img = np.full((32, 32, 3), 7, np.uint8)
    from PIL import Image

    Image.fromarray(img).save(tree / "train" / "cat" / "9999.png")
    d = load_cifar10(tree, progress=False)
    assert len(d.train_labels) == 31
    assert len(list(private_cache.glob("*.npz"))) == 2


def test_corrupt_cache_file_is_rebuilt(tree, private_cache):
    load_cifar10(tree, progress=False)
    (cache_file,) = private_cache.glob("*.npz")
    cache_file.write_bytes(b"garbage")
    assert_exact(load_cifar10(tree, progress=False))


@pytest.mark.parametrize("how", ["another dataset's cache file", "its arrays replaced"])
def test_a_cache_holding_other_images_is_never_trusted(tmp_path, tree, private_cache, capsys, how):
    """A cache file under this source's name that holds another dataset's arrays (the same image
    counts) is detected by its content and decoded again; the run trains on the source's images."""
    from conftest import tiny_arrays, write_tree

    truth = load_cifar10(tree, progress=False)
    (mine,) = private_cache.glob("*.npz")
    other_tree = write_tree(tmp_path / "other", "png", tiny_arrays(seed=5))
    if how == "another dataset's cache file":
        load_cifar10(other_tree, progress=False)
        (theirs,) = [p for p in private_cache.glob("*.npz") if p != mine]
        mine.write_bytes(theirs.read_bytes())
    else:
        other = load_cifar10(other_tree, progress=False)
        with np.load(mine) as z:
            kept = {k: z[k] for k in z.files}
        kept.update(train_x=other.train_images.numpy(), test_x=other.test_images.numpy())
        with open(mine, "wb") as f:
            np.savez(f, **kept)
    capsys.readouterr()
    again = load_cifar10(tree, progress=False)
    assert torch.equal(again.train_images, truth.train_images)
    assert torch.equal(again.test_images, truth.test_images)
    assert "does not hold" in capsys.readouterr().out
    assert load_cifar10(tree, progress=False).source == truth.source  # rebuilt: trusted again


def test_a_truncated_cache_in_a_read_only_cache_folder_still_loads(
    tree, private_cache, monkeypatch
):
    load_cifar10(tree, progress=False)
    (cache_file,) = private_cache.glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])

    def read_only(*a, **k):  # what a read-only cache folder does (root would ignore a chmod)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", read_only)
    monkeypatch.setattr("cifarkit.atomic.tempfile.mkstemp", read_only)
    assert_exact(load_cifar10(tree, progress=False))


# ---------------------------------------------------------------- bad input: one line, nothing
# written
def no_cache_written(cache):
    return not cache.exists() or not any(cache.iterdir())


def test_missing_path(tmp_path, private_cache):
    with pytest.raises(DataError, match="data path not found: .*nowhere"):
        load_cifar10(tmp_path / "nowhere")
    assert no_cache_written(private_cache)


def test_folder_without_train_and_test(tmp_path):
    (tmp_path / "x" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"has no test/ folder"):
        load_cifar10(tmp_path / "x")


def test_wrong_class_folders(tree, private_cache):
    (tree / "train" / "cat").rename(tree / "train" / "kitty")
    with pytest.raises(
        DataError,
        match=r"not the ten CIFAR-10 classes \(unexpected: kitty; missing or empty: cat\)",
    ):
        load_cifar10(tree, progress=False)
    assert no_cache_written(private_cache)


def test_empty_split(tree, private_cache):
    for f in (tree / "test").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match="empty split: .* has no test/<class>/ images"):
        load_cifar10(tree, progress=False)
    assert no_cache_written(private_cache)


def test_corrupt_image_is_named(tree, private_cache):
    bad = tree / "train" / "dog" / "0016.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot read image .*dog/0016\.png"):
        load_cifar10(tree, progress=False)
    assert no_cache_written(private_cache)


def test_truncated_image_is_named(tmp_path, private_cache):
    t = write_tree(tmp_path / "j", "jpg")
    bad = t / "test" / "ship" / "0016.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cannot read image .*ship/0016\.jpg"):
        load_cifar10(t, progress=False)
    assert no_cache_written(private_cache)


def test_wrong_image_size(tree):
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tree / "train" / "cat" / "big.png")
    with pytest.raises(DataError, match=r"big\.png is 64x64, expected 32x32"):
        load_cifar10(tree, progress=False)


@pytest.mark.parametrize("name", ["c.tar.gz", "c.zip", "c.tar"])
def test_truncated_archive(tmp_path, tree, private_cache, name):
    arc = write_archive(tree, tmp_path / name)
    arc.write_bytes(arc.read_bytes()[: arc.stat().st_size // 2])
    with pytest.raises(
        DataError, match=r"(truncated or corrupt archive|cannot read image|not the ten)"
    ):
        load_cifar10(arc, progress=False)
    assert no_cache_written(private_cache)


def test_unsupported_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported data file"):
        load_cifar10(tmp_path / "notes.txt")


def test_corrupt_batch_file(tmp_path):
    folder = write_batches(tmp_path / "cifar-10-batches-py", tiny_arrays())
    (folder / "data_batch_3").write_bytes(b"\x80\x04junk")
    with pytest.raises(DataError, match="corrupt CIFAR-10 batch file .*data_batch_3"):
        load_cifar10(tmp_path)


def test_batch_file_with_code_is_refused(tmp_path):
    import os
    import pickle

    folder = write_batches(tmp_path / "cifar-10-batches-py", tiny_arrays())

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(DataError, match="corrupt CIFAR-10 batch file"):
        load_cifar10(tmp_path)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- loads, but warns: one line each
# on stderr
def warnings_of(capfd) -> list[str]:
    err = capfd.readouterr().err
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_small_dataset_warns_once_with_its_counts(tree, capfd):
    load_cifar10(tree, progress=False)
    (line,) = warnings_of(capfd)
    assert (
        line
        == f"warning: {tree} holds 30 train / 20 test images (train per class 3..3, test per class"
        " 2..2); the full CIFAR-10 has 5,000 / 1,000 per class"
    )
    load_cifar10(tree, progress=False)  # from the cache: the same warning
    assert warnings_of(capfd) == [line]


def test_full_counts_do_not_warn():
    labels = lambda n: torch.arange(10).repeat_interleave(n)  # noqa: E731
    empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    assert data_warnings(Cifar10(empty, labels(5000), empty, labels(1000), source="x")) == []
    assert (
        "train per class 4,999..5,000"
        in data_warnings(Cifar10(empty, labels(5000)[1:], empty, labels(1000)))[0]
    )


def cut_before_last_member(archive: Path) -> int:
    """Rewrite a tar (or .tar.gz) as if cut exactly between its last two members; returns the images
    left."""
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
    cut = members[-1].offset  # the last member's header: everything before it is whole members
    opener = gzip.open if archive.name.endswith(".gz") else open
    with opener(archive, "rb") as f:
        data = f.read()[:cut]
    with opener(archive, "wb") as f:
        f.write(data)
    return sum(m.isfile() for m in members[:-1])


@pytest.mark.parametrize("name", ["c.tar", "c.tar.gz"])
def test_tar_cut_between_members_loads_with_a_truncation_warning(tmp_path, tree, capfd, name):
    arc = write_archive(tree, tmp_path / name)
    load_cifar10(arc, progress=False)
    assert "truncated" not in " ".join(warnings_of(capfd))  # complete: counts only
    assert cut_before_last_member(arc) == 49
    for _ in range(2):  # decoded, then from the cache
        d = load_cifar10(arc, progress=False)
        assert len(d.train_labels) + len(d.test_labels) == 49
        (line,) = warnings_of(capfd)
        assert line.startswith(f"warning: {arc} holds ") and "train per class 2..3" in line
        assert line.endswith("; archive looks truncated (no end-of-archive marker)")


@pytest.mark.parametrize("fmt", ["tree", "c.zip", "c.tar.gz"])
def test_nested_folder_in_a_class_folder_is_skipped_with_a_warning(tmp_path, tree, capfd, fmt):
    nested = tree / "train" / "cat" / "extra" / "deeper"
    nested.mkdir(parents=True)
    for i in range(4):
        shutil.copy(tree / "train" / "dog" / f"{15 + i % 3:04d}.png", nested.parent / f"x{i}.png")
    shutil.copy(tree / "train" / "dog" / "0015.png", nested / "y.png")
    source = tree if fmt == "tree" else write_archive(tree, tmp_path / fmt)
    for _ in range(2):  # decoded, then from the cache
        assert_exact(load_cifar10(source, progress=False))  # the nested images are not loaded
        lines = warnings_of(capfd)
        assert len(lines) == 2 and "holds 30 train / 20 test" in lines[0]
        assert lines[1].startswith("warning: skipped 5 images in the nested folder ")
        assert "train/cat/extra/ (only images directly in train/<class>/" in lines[1]


# ---------------------------------------------------------------- fingerprint
def test_fingerprint_names_the_content(tmp_path, tree):
    a = load_cifar10(tree, progress=False)
    fp = fingerprint(a)
    assert re.fullmatch(r"30\+20:[0-9a-f]{16}", fp)
    # same pixels
    assert fingerprint(load_cifar10(write_archive(tree, tmp_path / "c.tar"), progress=False)) == fp
    a.train_images[7, 1, 20, 3] ^= 1  # one pixel, one bit
    assert fingerprint(a) != fp
    a.train_images[7, 1, 20, 3] ^= 1
    a.test_labels[0] = 9
    assert fingerprint(a) != fp


# ---------------------------------------------------------------- subsets
def test_balanced_indices_are_balanced_seeded_and_sorted():
    labels = torch.arange(10).repeat_interleave(50)
    a = balanced_indices(labels, 100, seed=3)
    assert labels[a].bincount().tolist() == [10] * 10
    assert torch.equal(a, balanced_indices(labels, 100, seed=3))
    assert not torch.equal(a, balanced_indices(labels, 100, seed=4))
    assert torch.equal(a, a.sort().values)
    assert len(balanced_indices(labels, 1000)) == 500  # more than there is: everything


def test_split_train_val_is_disjoint_and_complete():
    images = torch.arange(500).view(500, 1, 1, 1).expand(500, 3, 32, 32).to(torch.int32)
    labels = torch.arange(10).repeat_interleave(50)
    tx, ty, vx, vy = split_train_val(images, labels, 100)
    assert len(ty) == 400 and len(vy) == 100 and vy.bincount().tolist() == [10] * 10
    ids = torch.cat([tx[:, 0, 0, 0], vx[:, 0, 0, 0]]).sort().values
    assert torch.equal(ids, torch.arange(500, dtype=torch.int32))
    with pytest.raises(DataError, match="val_split"):
        split_train_val(images, labels, 500)


# ---------------------------------------------------------------- odd names and links in a tree
# (issue 28)
def test_a_file_name_that_is_not_utf8_loads(tree):
    from cifarkit.data.sources import load_cifar10

    before = len(load_cifar10(str(tree), progress=False).train_labels)
    src = next((tree / "train" / "cat").iterdir())
    (tree / "train" / "cat").joinpath(os.fsdecode(b"\xff\xfe-odd.png")).write_bytes(
        src.read_bytes()
    )
    assert len(load_cifar10(str(tree), progress=False).train_labels) == before + 1


@pytest.mark.parametrize(
    "link, target, needle",
    [
        ("loop", "..", "a symbolic link to a folder above it"),
        ("self", "self", "loops back on itself"),
        ("self.png", "self.png", "loops back on itself"),
        ("gone.png", "/nonexistent/gone.png", "which does not exist"),
    ],
)
def test_a_link_that_loops_or_leads_nowhere_is_one_line(tree, link, target, needle):
    from cifarkit.data.sources import load_cifar10

    os.symlink(target, tree / "train" / "cat" / link)
    with pytest.raises(DataError) as e:
        load_cifar10(str(tree), progress=False)
    assert needle in str(e.value) and link in str(e.value) and "\n" not in str(e.value)
