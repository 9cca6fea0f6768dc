"""What a folder of images holds, as a user brings it: layout, classes, counts, sizes, colour modes, bad files.

`sslops init` surveys a folder before it proposes params for it. Unlike the readers, which stop at the first bad
file (prepare must not write half a store), a survey reads every header and lists every file it could not use, so
one look shows all that needs fixing. Only headers are read, never pixels.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sslops.data import images
from sslops.data.cifar import plan_cifar10
from sslops.data.idx import plan_idx
from sslops.data.imagefolder import IGNORED, image_files, plan_imagefolder
from sslops.data.sources import Plan
from sslops.errors import SslopsError

SPLITS = ("train", "test")


@dataclass
class Survey:
    """A folder's content. `counts[split][class]` for the labelled splits; sizes as (height, width)."""

    root: Path
    layout: str  # imagefolder | idx | cifar10
    classes: list[str]
    counts: dict[str, dict[str, int]]
    unlabeled: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)
    modes: Counter[str] = field(default_factory=Counter)

    @property
    def labelled(self) -> int:
        return sum(self.counts.get("train", {}).values())

    @property
    def smallest_class(self) -> int:
        """Train images of the class with the fewest: what label budgets per class can draw from."""
        return min(self.counts["train"].values())

    @property
    def gray(self) -> int:
        return sum(n for mode, n in self.modes.items() if images.is_gray(mode))

    def shorter_sides(self) -> list[int]:
        return [min(h, w) for h, w in self.sizes]


def survey(root: Path, unlabeled_dir: str, max_pixels: int) -> Survey:
    """Survey the folder `root`; a folder no reader can use raises SslopsError saying why and what to do."""
    if not root.is_dir():
        raise SslopsError(f"{root}: no such folder")
    entries = [p for p in root.iterdir() if p.name not in IGNORED and not p.name.startswith(".")]
    names = {p.name for p in entries}
    if {"train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"} & names:
        return _from_plan(root, "idx", plan_idx(root, []))
    if "batches.meta" in names:
        return _from_plan(root, "cifar10", plan_cifar10(root, []))
    return _imagefolder(root, entries, unlabeled_dir, max_pixels)


def _from_plan(root: Path, layout: str, plan: Plan) -> Survey:
    """A survey from a reader's plan (headers and labels only): counts per split and class, sizes, modes."""
    counts: dict[str, dict[str, int]] = {}
    out = Survey(root, layout, plan.classes, counts)
    out.modes.update(plan.modes)
    for part in plan.parts:
        out.sizes += [part.shape[:2]] * part.count
        if not plan.modes:  # a reader of arrays (IDX, CIFAR): the channels are the mode
            out.modes["L" if part.shape[2] == 1 else "RGB"] += part.count
        if part.labels is None:
            out.unlabeled += part.count
            continue
        per_class = counts.setdefault(part.split, dict.fromkeys(plan.classes, 0))
        labels, n = np.unique(part.labels, return_counts=True)
        for label, k in zip(labels, n, strict=True):
            per_class[plan.classes[int(label)]] += int(k)
    return out


def _imagefolder(root: Path, entries: list[Path], unlabeled_dir: str, max_pixels: int) -> Survey:
    loose = [p for p in entries if p.is_file()]
    folders = [p for p in entries if p.is_dir()]
    splits = [p for p in folders if p.name in SPLITS]
    if not splits:
        if folders and any(image_files(f) for f in folders if f.name != unlabeled_dir):
            raise SslopsError(
                f"{root}: class folders without train/ and test/ ({', '.join(sorted(f.name for f in folders))}). "
                "sslops needs the split fixed in the folder, so that no test image is ever trained on: move each "
                f"class folder to {root}/train/<class>/ and about a fifth of its images to {root}/test/<class>/."
            )
        if loose or (root / unlabeled_dir).is_dir():
            raise SslopsError(
                f"{root}: only unlabeled images. Pretraining needs none of their labels, but its monitor and the "
                "downstream task do: add a few labelled images as train/<class>/ and test/<class>/ beside them "
                f"(the unlabeled ones go to {root}/{unlabeled_dir}/)."
            )
        raise SslopsError(f"{root}: no images found (expected train/<class>/*.jpg|png and test/<class>/...)")
    if loose:
        raise SslopsError(
            f"{root}: mixed layouts: image folders {', '.join(sorted(p.name for p in splits))}/ and loose files "
            f"beside them ({', '.join(p.name for p in loose[:5])}). Move unlabeled images to {root}/{unlabeled_dir}/."
        )
    for split in ("train", "test"):  # the task trains on one and is scored on the other: said before prepare runs
        if split not in {p.name for p in splits}:
            beside = next(p.name for p in splits if p.name != split)
            raise SslopsError(
                f"{root}: no {split}/ folder beside {beside}/; expected train/<class>/ and test/<class>/ (the test "
                "images are scored on, never trained on)"
            )

    out = _from_plan(root, "imagefolder", plan_imagefolder(root, [], None, unlabeled_dir, max_pixels, True))
    classes = out.classes
    if len(classes) < 2:
        raise SslopsError(f"{root}: one class ({', '.join(classes)}); a labelled task needs at least two")
    return out


def median_side(survey_: Survey) -> int:
    """The median shorter side of the surveyed images, in px."""
    return int(statistics.median(survey_.shorter_sides()))
