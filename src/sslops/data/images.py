"""Reading image files a user hands over: bounded, confined to the data folder, converted by one documented rule.

Used by the ImageFolder reader (prepare) and by `sslops embed`, so both refuse the same files with the same named
errors (`ImageRejected`):

- a file whose header declares more than `max_pixels` pixels is refused before it is decoded (a decompression
  bomb decodes a few kilobytes into gigabytes);
- a path that leaves the data folder through a symbolic link, or that is not a regular file (a FIFO would block
  the reader), is refused; a file name that is not valid UTF-8 is refused (it cannot be recorded in the manifest);
- colour modes are converted, never reinterpreted: EXIF orientation is applied first; 16-bit images are rescaled
  (value × 255 / 65535, rounded), not clipped; a palette is expanded; alpha is composited onto `BACKGROUND`
  (white); CMYK and YCbCr are converted to RGB; the result is then made grayscale (ITU-R 601-2 luma) or RGB.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sslops.errors import SslopsError

BACKGROUND = (255, 255, 255)  # what transparent pixels become
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
ORIENTATION = 0x0112  # EXIF tag; values 5 to 8 turn the image by 90 degrees, so height and width swap
TRANSPOSING = {5, 6, 7, 8}


class Header(NamedTuple):
    """What a file's header says, after every check: size (EXIF orientation applied), Pillow mode, and whether its
    bytes are a JPEG that decodes to exactly what `read` returns in that mode (no orientation to apply)."""

    height: int
    width: int
    mode: str
    plain_jpeg: bool = False


class ImageRejected(SslopsError):
    """An image file that is not read, with the reason; `embed` skips these, `prepare` stops on them."""

    def __init__(self, path: Path, reason: str, kind: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.kind = path, reason, kind

    def __reduce__(self) -> tuple[type, tuple[Path, str, str]]:  # raised in a prepare worker, re-raised in the stage
        return type(self), (self.path, self.reason, self.kind)


def check_path(path: str | Path, root: Path) -> None:
    """Refuse a path that escapes `root` through a link, is not a regular file, or has a non-UTF-8 name.

    Works on the path as a string: pathlib interns every part of every path it parses (Python 3.11), and those
    strings are never freed, so a folder of a million photos kept their names in the stage process."""
    name = os.fspath(path)
    try:
        os.path.relpath(name, root).encode("utf-8")
    except UnicodeEncodeError:
        raise ImageRejected(Path(name), "the file name is not valid UTF-8; rename the file", "name") from None
    try:
        resolved = os.path.realpath(name, strict=True)
        mode = os.stat(resolved).st_mode
    except (OSError, RuntimeError) as exc:  # a dangling link, a link loop, a file gone meanwhile
        reason = f"cannot be followed to a file ({exc.__class__.__name__}: {exc})"
        raise ImageRejected(Path(name), reason, "link") from None
    inside = os.path.realpath(root)
    if os.path.commonpath([resolved, inside]) != inside:
        raise ImageRejected(Path(name), f"a symbolic link to {resolved}, outside the data folder {root}", "link")
    if not stat.S_ISREG(mode):
        raise ImageRejected(Path(name), "not a regular file (a FIFO, device or socket)", "not-a-file")


def inspect(path: str | Path, root: Path, max_pixels: int) -> Header:
    """(height, width, mode) of a file a user handed over as an image, after every check a reader applies to it
    before decoding: confined to `root`, an image by its suffix, not empty, a readable header within `max_pixels`."""
    check_path(path, root)
    if os.path.splitext(path)[1].lower() not in IMAGE_SUFFIXES:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        reason = f"not an image file (expected one of {kinds}); move it out or remove it"
        raise ImageRejected(Path(path), reason, "suffix")
    if os.stat(path).st_size == 0:
        raise ImageRejected(Path(path), "empty (0 bytes)", "empty")
    return header(path, max_pixels)


LISTED = 20  # files named in one error; the rest are counted


def refuse(root: Path, rejected: list[ImageRejected]) -> None:
    """Raise one error for every file under `root` that cannot be used, each named with its reason (up to
    `LISTED`), so one look shows all there is to fix; a single file keeps its own error."""
    if len(rejected) == 1:
        raise rejected[0]
    if rejected:
        listed = "\n".join(f"  - {r}" for r in rejected[:LISTED])
        more = f"\n  ... and {len(rejected) - LISTED} more" if len(rejected) > LISTED else ""
        reason = f"{len(rejected)} file(s) cannot be used; fix or remove them:\n{listed}{more}"
        raise ImageRejected(root, reason, rejected[0].kind)


def header(path: str | Path, max_pixels: int) -> Header:
    """The image's size as `read` returns it (EXIF orientation applied) and mode, from the file header alone;
    refuses oversized images before any pixel is decoded."""
    try:
        with Image.open(path) as img:
            height, width, mode = img.height, img.width, img.mode
            if height * width > max_pixels:
                raise ImageRejected(
                    Path(path),
                    f"{width}x{height} = {height * width:,} pixels, more than prepare.max_pixels ({max_pixels:,}): "
                    "refused before decoding (a decompression bomb, or an image far larger than training needs)",
                    "too-large",
                )
            # Pillow reads a PNG's EXIF by decoding the whole image unless the chunk came before the pixels.
            orientation = img.getexif().get(ORIENTATION, 1) if img.format != "PNG" or "exif" in img.info else 1
            if orientation in TRANSPOSING:
                height, width = width, height
            plain_jpeg = img.format == "JPEG" and mode in ("L", "RGB") and orientation == 1
    except Image.DecompressionBombError as exc:  # Pillow's own limit, far above max_pixels
        raise ImageRejected(Path(path), f"refused before decoding: {exc}", "too-large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(Path(path), f"cannot be read as an image ({exc})", "unreadable") from None
    return Header(height, width, mode, plain_jpeg)


def is_gray(mode: str) -> bool:
    """Whether an image of this Pillow mode has no colour (it becomes one channel under `channels: auto`)."""
    return mode in GRAY_MODES


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grayscale image rescaled to 8 bits; a float image clipped to 0..255."""
    if img.mode in SIXTEEN_BIT:
        values = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.rint(np.clip(values, 0, 65535) * (255 / 65535)).astype(np.uint8), "L")
    if img.mode == "F":
        return Image.fromarray(np.rint(np.clip(np.asarray(img), 0, 255)).astype(np.uint8), "L")
    return img


def _flatten_alpha(img: Image.Image) -> Image.Image:
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        img = Image.alpha_composite(canvas, rgba).convert("RGB")
    return img


def read(path: str | Path, channels: int, max_pixels: int) -> np.ndarray:
    """uint8 pixels (H, W, channels) of one image at its own size, converted by the module's rule."""
    header(path, max_pixels)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img = _flatten_alpha(_to_8bit(img))
            img = img.convert("L" if channels == 1 else "RGB")
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(Path(path), f"corrupt or truncated image ({exc})", "unreadable") from None
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)
