"""ImageFolder trees: `<root>/<split>/<class>/*.png|jpg` plus an optional flat unlabeled folder.

Sizes and modes come from image headers at plan time, so an oversized or misplaced image is reported before any
pixels are decoded; each image is planned at its own size, and `sslops.data.resize` brings a mix to one shape.
Corrupt files are reported when their pixels are loaded. Colour modes are converted by the rule of
`sslops.data.images`.
"""

from __future__ import annotations

import functools
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslops.data import decode, images
from sslops.data.sources import Part, Parts, Plan
from sslops.errors import SslopsError

# Files a user's tree may legitimately carry next to the images.
IGNORED = {".DS_Store", "Thumbs.db", ".gitignore", ".dvcignore"}
SPLITS = ("train", "test", "unlabeled")


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
            out.append(images.inspect(path, root, max_pixels))
        except images.ImageRejected as exc:
            out.append(exc)
    return out


def _headers(
    files: _Files, root: Path, max_pixels: int, workers: int
) -> Iterator[images.Header | images.ImageRejected]:
    """Every file's header, in order; a million files' headers take minutes in one process (docs/benchmarks.md), so
    up to `workers` processes read them, one per `IMAGES_PER_WORKER` files at most (as decoding does). The paths go
    out a task at a time, and the headers come back as they are read: neither is held for the whole folder."""
    n = len(files)
    chunks = ([files.path(i) for i in range(at, min(n, at + HEADERS_PER_TASK))] for at in range(0, n, HEADERS_PER_TASK))
    processes = max(1, min(workers, n // decode.IMAGES_PER_WORKER))
    job = functools.partial(_inspect_chunk, root=root, max_pixels=max_pixels)
    count = -(-n // HEADERS_PER_TASK)
    return (header for chunk in decode.in_pool(job, chunks, processes, count) for header in chunk)


@dataclass(frozen=True, slots=True)
class _File:
    """A part's loader: one file's pixels, as a batch of one (slotted, made when its part is read)."""

    path: str
    channels: int
    max_pixels: int

    def __call__(self) -> np.ndarray:
        return images.read(self.path, self.channels, self.max_pixels)[None]


class _Files(Parts):
    """An ImageFolder plan's parts, one per file, kept as columns and made into a `Part` when read.

    A Part object per file, with its loader and its two names, held about 375 bytes, and prepare's peak grew by as
    much per photo; here a file costs its path's bytes in one buffer and 19 bytes of arrays. Filled in two passes:
    the walk adds each file, its header its size and mode; `close` then fixes what is known only once every header
    is read (the channels)."""

    def __init__(self, root: Path, max_pixels: int) -> None:
        self.prefix = len(os.path.join(root, ""))  # every path is below root as given: its name there is the rest
        self.max_pixels, self.channels, self.keep_mode = max_pixels, 3, "RGB"
        self.paths, self.ends = bytearray(), array("q")
        self.splits, self.labels = array("B"), array("i")  # an index into SPLITS; the class index, -1 unlabeled
        self.sizes, self.modes, self.plain = array("I"), array("B"), array("b")  # codes: keys of the dicts below
        self.size_codes: dict[tuple[int, int], int] = {}  # each distinct value, and its index
        self.mode_codes: dict[str, int] = {}
        self.by_size: list[tuple[int, int, int]] = []  # the shape of each size code
        self.one_label: dict[int, np.ndarray] = {}

    def add(self, split: str, paths: list[str], label: int | None) -> None:
        for path in paths:
            self.paths += os.fsencode(path)
            self.ends.append(len(self.paths))
        self.splits.extend([SPLITS.index(split)] * len(paths))
        self.labels.extend([-1 if label is None else label] * len(paths))

    def path(self, i: int) -> str:
        return os.fsdecode(bytes(self.paths[self.ends[i - 1] if i else 0 : self.ends[i]]))

    def add_header(self, head: images.Header) -> None:
        for value, codes, known in ((head[:2], self.sizes, self.size_codes), (head.mode, self.modes, self.mode_codes)):
            codes.append(known.setdefault(value, len(known)))
        self.plain.append(head.plain_jpeg)

    def mode_counts(self) -> dict[str, int]:
        return {mode: self.modes.count(i) for mode, i in self.mode_codes.items()}

    def close(self, channels: int, labels: int) -> None:
        self.channels, self.keep_mode = channels, "L" if channels == 1 else "RGB"
        self.by_size = [(h, w, channels) for h, w in self.size_codes]  # shared by the parts, not a tuple each
        self.one_label = {k: np.array([k], dtype=np.int64) for k in range(labels)}  # shared, read-only
        for array_ in self.one_label.values():
            array_.flags.writeable = False

    def __len__(self) -> int:
        return len(self.ends)

    def images(self) -> int:
        return len(self.ends)  # one a file

    def shapes(self) -> set[tuple[int, int, int]]:
        return set(self.by_size)

    def part(self, i: int) -> Part:
        path, label = self.path(i), self.labels[i]
        plain = self.plain[i] and self.modes[i] == self.mode_codes.get(self.keep_mode)
        return Part(
            split=SPLITS[self.splits[i]],
            source=path[self.prefix :].replace(os.sep, "/"),
            count=1,
            shape=self.by_size[self.sizes[i]],
            labels=None if label < 0 else self.one_label[label],
            load=_File(path, self.channels, self.max_pixels),
            file=path if plain else None,
        )


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

    files = _Files(root, max_pixels)
    rejected: list[images.ImageRejected] = []
    for split, folder in split_dirs.items():
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            paths = image_files(class_dir)
            if not paths:
                rejected.append(
                    images.ImageRejected(class_dir, "class folder is empty; add images or remove it", "empty")
                )
            files.add(split, paths, label_of[class_dir.name])
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
        files.add("unlabeled", image_files(root / unlabeled_dir), None)

    for result in _headers(files, root, max_pixels, workers):
        if isinstance(result, images.ImageRejected):
            rejected.append(result)
        else:
            files.add_header(result)
    images.refuse(root, rejected)  # every file that cannot be used, before any pixel is read
    modes = files.mode_counts()
    gray = sum(count for mode, count in modes.items() if images.is_gray(mode))
    notes = ()
    if channels is None:
        channels = 1 if gray == len(files) else 3
        if 0 < gray < len(files):
            mix = f"{gray} grayscale and {len(files) - gray} colour images"
            notes = (f"{mix}: all converted to RGB (set prepare.channels: 1 for grayscale)",)
    files.close(channels, len(names))
    return Plan(parts=files, classes=names, notes=notes, modes=modes)
