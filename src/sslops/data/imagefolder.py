"""ImageFolder trees: `<root>/<split>/<class>/*.png|jpg` plus an optional flat unlabeled folder.

Sizes and modes come from image headers at plan time, so an oversized or misplaced image is reported before any
pixels are decoded; each image is planned at its own size, and `sslops.data.resize` brings a mix to one shape.
Corrupt files are reported when their pixels are loaded. Colour modes are converted by the rule of
`sslops.data.images`.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslops.data import decode, images
from sslops.data.sources import Part, Plan
from sslops.errors import SslopsError

# Files a user's tree may legitimately carry next to the images.
IGNORED = {".DS_Store", "Thumbs.db", ".gitignore", ".dvcignore"}


def image_files(folder: Path) -> list[str]:
    """The files below `folder` (checked one by one when the plan reads their headers), in path order, as names: a
    Path object per file is ten times the memory of its name, and a folder may hold millions."""
    found = []
    for top, _, files in os.walk(folder):
        found += [os.path.join(top, f) for f in files if f not in IGNORED]
    return sorted(found, key=lambda path: path.split(os.sep))


HEADERS_PER_TASK = 2048  # files whose headers one task of a planning process reads


def _inspect_chunk(paths: list[str], root: Path, max_pixels: int) -> list[images.Header | images.ImageRejected]:
    """Each file's header, or why it cannot be used: a planning process's task (module level, so it pickles)."""
    out: list[images.Header | images.ImageRejected] = []
    for path in paths:
        try:
            out.append(images.inspect(Path(path), root, max_pixels))
        except images.ImageRejected as exc:
            out.append(exc)
    return out


def _headers(paths: list[str], root: Path, max_pixels: int, workers: int) -> list[images.Header | images.ImageRejected]:
    """Every file's header, in order; a million files' headers take minutes in one process (docs/benchmarks.md), so
    up to `workers` processes read them, one per `IMAGES_PER_WORKER` files at most (as decoding does)."""
    chunks = [paths[i : i + HEADERS_PER_TASK] for i in range(0, len(paths), HEADERS_PER_TASK)]
    processes = max(1, min(workers, len(paths) // decode.IMAGES_PER_WORKER))
    job = functools.partial(_inspect_chunk, root=root, max_pixels=max_pixels)
    return [header for chunk in decode.in_pool(job, chunks, processes, len(chunks)) for header in chunk]


@dataclass(frozen=True, slots=True)
class _File:
    """A part's loader: one file's pixels, as a batch of one. Slotted: a folder of a million photos plans a million
    of these, and a functools.partial with its arguments' tuple took 216 bytes each against this one's 65
    (tracemalloc, 20,000 of them)."""

    path: str
    channels: int
    max_pixels: int

    def __call__(self) -> np.ndarray:
        return images.read(Path(self.path), self.channels, self.max_pixels)[None]


def plan_imagefolder(
    root: Path,
    classes: list[str],
    channels: int | None,
    unlabeled_dir: str | None,
    max_pixels: int,
    train_has_every_class: bool = False,
    workers: int = 1,
) -> Plan:
    """Plan an ImageFolder tree. `classes` fixes label order; folders not in it are appended sorted.
    `train_has_every_class`: a class folder under test/ alone is one more unusable folder (`sslops init`; prepare
    leaves it to validation, which names the missing class).

    `channels` None means: 1 when every image is grayscale, else 3 (a mix is converted to RGB, and said so).
    Every file is checked by `sslops.data.images` (size limit, links, file type, name) before any pixel is read,
    by up to `workers` processes.
    """
    split_dirs = {s: root / s for s in ("train", "test") if (root / s).is_dir()}
    if "train" not in split_dirs:
        raise SslopsError(f"{root}: no train/ folder; expected <root>/train/<class>/<image> (and test/).")
    found = sorted({d.name for folder in split_dirs.values() for d in folder.iterdir() if d.is_dir()})
    names = list(classes) + [c for c in found if c not in classes]
    label_of = {name: i for i, name in enumerate(names)}

    entries: list[tuple[str, str, int | None]] = []
    rejected: list[images.ImageRejected] = []
    for split, folder in split_dirs.items():
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            files = image_files(class_dir)
            if not files:
                rejected.append(
                    images.ImageRejected(class_dir, "class folder is empty; add images or remove it", "empty")
                )
            entries += [(split, f, label_of[class_dir.name]) for f in files]
        for stray in (p for p in folder.iterdir() if p.is_file() and p.name not in IGNORED):
            reason = f"a file directly under {folder.name}/ (images belong in {folder.name}/<class>/)"
            rejected.append(images.ImageRejected(stray, reason, "layout"))
    if train_has_every_class:
        trained = {d.name for d in split_dirs["train"].iterdir() if d.is_dir()}
        rejected += [
            images.ImageRejected(root / "test" / c, f"a class with no train/{c}/ folder", "layout")
            for c in found
            if c not in trained
        ]
    if unlabeled_dir and (root / unlabeled_dir).is_dir():
        entries += [("unlabeled", f, None) for f in image_files(root / unlabeled_dir)]

    headers: list[images.Header] = []
    for result in _headers([path for _, path, _ in entries], root, max_pixels, workers):
        if isinstance(result, images.ImageRejected):
            rejected.append(result)
        else:
            headers.append(result)
    images.refuse(root, rejected)  # every file that cannot be used, before any pixel is read
    gray = sum(images.is_gray(h.mode) for h in headers)
    notes = ()
    if channels is None:
        channels = 1 if gray == len(headers) else 3
        if 0 < gray < len(headers):
            mix = f"{gray} grayscale and {len(headers) - gray} colour images"
            notes = (f"{mix}: all converted to RGB (set prepare.channels: 1 for grayscale)",)
    # Shared between parts, not one per part: a label array per class, a shape tuple per size.
    one_label = {k: np.array([k], dtype=np.int64) for k in label_of.values()}
    for array in one_label.values():
        array.flags.writeable = False
    shapes: dict[tuple[int, int, int], tuple[int, int, int]] = {}
    keep_mode = "L" if channels == 1 else "RGB"
    prefix = len(os.path.join(root, ""))  # every path is below root as given: its name there is the rest
    parts = [
        Part(
            split=split,
            source=path[prefix:].replace(os.sep, "/"),
            count=1,
            shape=shapes.setdefault((head.height, head.width, channels), (head.height, head.width, channels)),
            labels=None if label is None else one_label[label],
            load=_File(path, channels, max_pixels),
            file=path if head.plain_jpeg and head.mode == keep_mode else None,
        )
        for (split, path, label), head in zip(entries, headers, strict=True)
    ]
    return Plan(parts=parts, classes=names, notes=notes, modes=dict(Counter(h.mode for h in headers)))
