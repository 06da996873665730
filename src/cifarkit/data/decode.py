"""One image file to the RGB pixels a viewer shows, or one line saying why not.

Used for the training images (which must be 32x32) and for `predict` (any size). What PIL's plain
``convert("RGB")`` gets wrong is handled here: 16-bit and 32-bit grayscale ("I;16", "I") are scaled
to 8 bits instead of clipped to white, float images ("F") are scaled from [0, 1], transparency is
laid over white (as a viewer on a white page shows it), and EXIF orientation is applied (a phone
photo stands up). Decoding is bounded: a file larger than MAX_FILE_BYTES (an archive member:
`imagefiles` checks its header size before reading it), or an image of more than MAX_PIXELS, is
refused before its pixels are decoded (a decompression bomb never reaches memory), and PIL's own
bomb warnings never reach stderr.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from ..base import first_line, show_path
from .dataset import DataError

MAX_FILE_BYTES = 256 * 2**20  # one image file; CIFAR-10's are ~2 KB, a phone photo ~5-20 MB
MAX_PIXELS = 120_000_000  # width x height; a 108-megapixel phone photo still opens
Source = Union[str, Path, bytes, BinaryIO]


def too_large(name: str, size: int) -> DataError:
    """The one-line refusal of a file or member of `size` bytes."""
    return DataError(
        f"{name} is {size / 2**20:,.0f} MiB: too large for an image file (limit "
        f"{MAX_FILE_BYTES // 2**20} MiB); skip or remove it"
    )


def open_rgb(
    source: Source, name: str, *, size: tuple[int, int] | None = None, draft: int | None = None
):
    """(PIL RGB image, notes) for the image in `source` (a path, bytes or a file object); `name`
    names it in errors. `size`: refuse any other (width, height) before decoding; `draft`: let a
    JPEG decode at a reduced scale no smaller than this many pixels a side (fast for a large photo
    that is then shrunk; the returned image's info["source_size"] is the file's own size, upright).
    Notes say what was done ("converted from RGBA", "EXIF orientation applied", ...). DataError, one
    line, for anything that is not a readable image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, (str, os.PathLike)) and os.path.getsize(source) > MAX_FILE_BYTES:
        raise too_large(show_path(name), os.path.getsize(source))  # before a byte of it is read
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # bounded by MAX_PIXELS below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                w, h = im.size
                if size is not None and (w, h) != size:
                    raise DataError(
                        f"image {show_path(name)} is {w}x{h}, expected {size[0]}x{size[1]}"
                    )
                if w * h > MAX_PIXELS:
                    raise DataError(
                        f"image {show_path(name)} is {w}x{h} pixels: too large to decode "
                        f"(limit {MAX_PIXELS / 1e6:.0f} megapixels)"
                    )
                if getattr(im, "n_frames", 1) > 1:
                    notes.append(f"first of {im.n_frames} frames")
                if draft and im.format == "JPEG":
                    im.draft("RGB", (draft, draft))
                im.load()
                turn = _orientation(im)
                if turn not in (None, 1):
                    notes.append("EXIF orientation applied")
                rgb = _to_rgb(ImageOps.exif_transpose(im), notes)
                # upright, before any draft
                rgb.info["source_size"] = (h, w) if turn in (5, 6, 7, 8) else (w, h)
                return rgb, notes
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(
            f"image {show_path(name)} is too large to decode (a decompression bomb?)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(
            f"cannot read image {show_path(name)}: {first_line(e, default=type(e).__name__)}"
        ) from None


def _orientation(im) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block: no orientation to apply
        return None


def _to_rgb(im, notes: list[str]):
    """`im` as 8-bit RGB, scaled (not clipped) from deeper modes, transparency over white."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    notes.append(f"converted from {mode}")
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if mode == "F":
            top = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
        elif mode.startswith("I;16") or (a.size and a.max() > 255):
            top = 65535.0
        else:
            top = 255.0
        gray = np.clip(np.nan_to_num(a) * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise DataError(f"image mode {mode} cannot be shown as RGB ({e})") from None
