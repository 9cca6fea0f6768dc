"""ImageFolder trees: `<root>/<split>/<class>/*.png|jpg` plus an optional flat unlabeled folder.

Sizes and modes come from image headers at plan time, so a wrong-sized image is reported before any
pixels are decoded; corrupt files are reported when their pixels are loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sslops.data.sources import Part, Plan
from sslops.errors import SslopsError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
# Files a user's tree may legitimately carry next to the images.
IGNORED = {".DS_Store", "Thumbs.db", ".gitignore", ".dvcignore"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _image_files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or path.name in IGNORED:
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise SslopsError(
                f"{path}: not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))}); "
                "move it out of the data folder or remove it."
            )
        files.append(path)
    return files


def _header(path: Path) -> tuple[int, int, str]:
    try:
        with Image.open(path) as img:
            return img.height, img.width, img.mode
    except (UnidentifiedImageError, OSError) as exc:
        raise SslopsError(f"{path}: cannot be read as an image ({exc}); the file is corrupt or not an image.") from None


def _loader(path: Path, mode: str):
    def load() -> np.ndarray:
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert(mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise SslopsError(f"{path}: corrupt or truncated image ({exc}).") from None
        return pixels.reshape(1, pixels.shape[0], pixels.shape[1], -1)

    return load


def plan_imagefolder(
    root: Path, classes: list[str], channels: int | None, unlabeled_dir: str | None = "unlabeled"
) -> Plan:
    """Plan an ImageFolder tree. `classes` fixes label order; folders not in it are appended sorted.

    `channels` None means: take it from the first image (grayscale -> 1, anything else -> 3).
    """
    split_dirs = {s: root / s for s in ("train", "test") if (root / s).is_dir()}
    if "train" not in split_dirs:
        raise SslopsError(f"{root}: no train/ folder; expected <root>/train/<class>/<image> (and test/).")
    found = sorted({d.name for folder in split_dirs.values() for d in folder.iterdir() if d.is_dir()})
    names = list(classes) + [c for c in found if c not in classes]
    label_of = {name: i for i, name in enumerate(names)}

    entries: list[tuple[str, Path, int | None]] = []
    for split, folder in split_dirs.items():
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            files = _image_files(class_dir)
            if not files:
                raise SslopsError(f"{class_dir}: class folder is empty; add images or remove the folder.")
            entries += [(split, f, label_of[class_dir.name]) for f in files]
        stray = [p for p in folder.iterdir() if p.is_file() and p.name not in IGNORED]
        if stray:
            raise SslopsError(f"{stray[0]}: file directly under {folder}; images belong in <split>/<class>/.")
    if unlabeled_dir and (root / unlabeled_dir).is_dir():
        entries += [("unlabeled", f, None) for f in _image_files(root / unlabeled_dir)]

    parts: list[Part] = []
    expected: tuple[int, int] | None = None
    mode = None if channels is None else ("L" if channels == 1 else "RGB")
    for split, path, label in entries:
        h, w, img_mode = _header(path)
        if expected is None:
            expected, first = (h, w), path
            mode = mode or ("L" if img_mode in GRAY_MODES else "RGB")
        elif (h, w) != expected:
            raise SslopsError(
                f"{path}: image is {h}x{w} but {first} is {expected[0]}x{expected[1]}; all images must share "
                "one size (resize them before adding the data)."
            )
        parts.append(
            Part(
                split=split,
                source=path.relative_to(root).as_posix(),
                count=1,
                shape=(h, w, 1 if mode == "L" else 3),
                labels=None if label is None else np.array([label], dtype=np.int64),
                load=_loader(path, mode),
            )
        )
    return Plan(parts=parts, classes=names)
