"""Images decoded to the pixels a viewer shows (bit depth, transparency, EXIF), or refused in one
line; decoding bounded in memory and time; the cache key covers what was read (symlinked class
folders too).
"""

import io
import os
import signal
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import cifarkit.data.decode as decode
import cifarkit.data.imagefiles as imagefiles
from cifarkit.base import CLASSES
from cifarkit.data.dataset import DataError
from cifarkit.data.sources import load_cifar10
from cifarkit.inference import ImageError, load_image

from conftest import write_archive

posix_only = pytest.mark.skipif(os.name != "posix", reason="signals")


def png(array, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def test_sixteen_bit_grayscale_is_scaled_not_clipped_to_white():
    # 0 .. 65472
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    im, notes = decode.open_rgb(png(ramp), "ramp.png", size=(32, 32))
    a = np.asarray(im)
    assert a.shape == (32, 32, 3) and (a[..., 0] == a[..., 1]).all()
    expect = np.round(ramp.astype(np.float64) * 255 / 65535)
    assert np.abs(a[..., 0].astype(int) - expect).max() <= 1 and a.mean() == pytest.approx(
        expect.mean(), abs=1
    )
    assert notes == ["converted from I;16"]


def test_transparency_is_laid_over_white_and_deep_float_images_are_scaled():
    rgba = np.zeros((32, 32, 4), np.uint8)
    # top half opaque red, bottom half transparent black
    rgba[:16, :, :3], rgba[:16, :, 3] = (200, 0, 0), 255
    a = np.asarray(decode.open_rgb(png(rgba, "RGBA"), "t.png")[0])
    assert (a[:16] == (200, 0, 0)).all() and (a[16:] == 255).all()
    f = Image.fromarray(np.full((32, 32), 0.5, np.float32), "F")
    buf = io.BytesIO()
    f.save(buf, "TIFF")
    assert np.asarray(decode.open_rgb(buf.getvalue(), "f.tif")[0]).mean() == pytest.approx(
        128, abs=1
    )


def test_exif_orientation_stands_a_phone_photo_up(tmp_path):
    # A 40x20 landscape sensor image tagged "rotate 90 CW" (orientation 6): a viewer shows it 20
    # wide, 40 high.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # the left half white: after the rotation, the top half is white
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    im, notes = decode.open_rgb(path, str(path))
    assert im.size == (20, 40) and "EXIF orientation applied" in notes
    a = np.asarray(im).mean(axis=(1, 2))
    assert a[:20].mean() > 200 and a[20:].mean() < 50
    x, notes = load_image(path)
    assert x.shape == (3, 32, 32) and "resized from 20x40 to 32x32" in notes


def test_a_decompression_bomb_and_an_oversized_file_are_one_line(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(bomb)  # 9 megapixels in ~10 KB on disk
    assert bomb.stat().st_size < 100_000
    # PIL's bomb check at 2x this, as for 400 MP
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000_000)
    with pytest.raises(ImageError) as e:
        load_image(bomb)
    assert "too large to decode" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(decode, "MAX_PIXELS", 100 * 100)  # our own bound, below PIL's
    Image.new("RGB", (200, 200)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="200x200 pixels: too large to decode"):
        load_image(tmp_path / "big.png")


def test_an_oversized_archive_member_is_refused_before_it_is_read(
    tmp_path, tree, monkeypatch, private_cache
):
    archive = write_archive(tree, tmp_path / "c.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("cifar/train/cat/huge.png", b"\0" * 300_000)  # deflates to almost nothing
    monkeypatch.setattr(imagefiles, "MAX_FILE_BYTES", 100_000)
    reads = []
    real = zipfile.ZipFile.read
    monkeypatch.setattr(
        zipfile.ZipFile, "read", lambda self, name, *a: reads.append(name) or real(self, name, *a)
    )
    with pytest.raises(DataError) as e:
        load_cifar10(archive, progress=False)
    msg = str(e.value)
    assert "huge.png is 0 MiB: too large for an image file" in msg and "\n" not in msg
    # refused from its header, never read into memory
    assert "cifar/train/cat/huge.png" not in reads


def test_an_odd_image_in_the_training_data_is_decoded_right(tmp_path, tree, private_cache):
    gray16 = np.full((32, 32), 32768, np.uint16)  # mid grey at 16 bits
    target = tree / "train" / "cat" / "0009.png"
    assert target.exists()
    target.write_bytes(png(gray16))
    d = load_cifar10(tree, progress=False)
    i = [k for k, y in enumerate(d.train_labels.tolist()) if y == CLASSES.index("cat")][0]
    # not 255 (PIL's clip)
    assert d.train_images[i].float().mean().item() == pytest.approx(128, abs=1)


def test_the_cache_key_looks_inside_a_symlinked_class_folder(tmp_path, tree, private_cache):
    real = tmp_path / "elsewhere" / "cat"
    real.parent.mkdir()
    (tree / "train" / "cat").rename(real)
    (tree / "train" / "cat").symlink_to(real, target_is_directory=True)
    first = load_cifar10(tree, progress=False)
    next(iter(sorted(real.iterdir()))).unlink()  # one cat fewer, changed only behind the link
    second = load_cifar10(tree, progress=False)
    assert len(second.train_labels) == len(first.train_labels) - 1


@posix_only
def test_ctrl_c_during_the_first_decode_stops_within_a_second(monkeypatch):
    def slow(blob, name, size=None):
        time.sleep(0.005)  # 4 threads x 2,000 images: ~2.5 s of decoding left when Ctrl-C comes
        return Image.new("RGB", (32, 32)), []

    monkeypatch.setattr(imagefiles, "open_rgb", slow)
    # A KeyboardInterrupt that lands in a garbage-collection callback is swallowed by CPython
    # ("Exception ignored in ... WeakKeyDictionary"), as a real Ctrl-C can be: a person presses it
    # again, so the test does too, 0.3 s later, unless the first one stopped the decode.
    again = threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGINT))
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    again.start()
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            imagefiles._decode([(f"{i}.png", b"") for i in range(2000)], False, "decoding")
    finally:
        again.cancel()
    assert time.perf_counter() - start < 1.3
    time.sleep(0.1)  # let the workers finish the image in hand


def test_a_name_with_a_newline_stays_on_one_line(tmp_path):
    odd = tmp_path / "two\nlines.png"
    odd.write_bytes(b"not an image")
    with pytest.raises(ImageError) as e:
        load_image(odd)
    assert "\n" not in str(e.value) and "lines.png" in str(e.value)
    with pytest.raises(ImageError, match="is a folder, not an image"):
        load_image(tmp_path)
    assert torch.is_tensor(load_image(Image.new("RGBA", (8, 8)))[0])


def test_an_oversized_file_is_refused_before_it_is_read_in_a_tree_and_in_predict(
    tmp_path, tree, monkeypatch, private_cache
):
    big = tree / "train" / "dog" / "0005.png"
    big.write_bytes(png(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    monkeypatch.setattr(decode, "MAX_FILE_BYTES", big.stat().st_size - 1)
    opened = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda f, *a, **k: opened.append(str(f)) or real(f, *a, **k))
    with pytest.raises(DataError) as e:
        load_cifar10(tree, progress=False)
    assert f"{big} is 0 MiB: too large for an image file" in str(e.value) and str(big) not in opened
    with pytest.raises(ImageError, match="too large for an image file"):
        load_image(big)
