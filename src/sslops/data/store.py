"""The canonical image store: one memory-mappable uint8 array (N x H x W x C) plus a manifest table.

Every later stage reads images through `ImageStore`, whatever the raw format was, and the manifest
(one row per image, same order) is what Great Expectations validates and MLflow logs as the dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sslops.data.decode import decode_into
from sslops.data.sources import Plan
from sslops.errors import SslopsError
from sslops.outputs.atomic import ensure_space, reserve
from sslops.outputs.progress import progress_bar

PRETRAIN_SPLITS = ("train", "unlabeled")  # the images pretraining learns from (their labels are never read)
IMAGES = "images.npy"
MANIFEST = "manifest.parquet"
CLASSES = "classes.json"

MANIFEST_COLUMNS = {
    "split": "string",
    "source": "string",
    "index": "int64",
    "label": "Int64",
    "class_name": "string",
    "height": "int64",
    "width": "int64",
    "channels": "int64",
    "source_height": "int64",  # the size in the raw file, before `prepare.resize`
    "source_width": "int64",
    "sha256": "string",
    "mean": "float64",
    "std": "float64",
}


def write_store(plan: Plan, out_dir: Path, progress: bool = True, workers: int = 1) -> pd.DataFrame:
    """Fill `out_dir` with images.npy, manifest.parquet and classes.json from `plan`; return the manifest.

    Pixels are written part by part into a memory-mapped .npy, so datasets larger than RAM work. Up to `workers`
    processes decode the parts (and hash them and take their statistics), in plan order: the store is the same
    byte for byte whatever the number. `out_dir` should be a temporary directory (see
    `sslops.outputs.atomic.atomic_dir`): a part that fails to decode leaves nothing behind.
    """
    if plan.total == 0:
        raise SslopsError("The data folder holds no images.")
    shapes = {p.shape for p in plan.parts}
    if len(shapes) != 1:
        raise SslopsError(f"Images have different shapes {sorted(shapes)}; one size and channel count is required.")
    (h, w, c), n = shapes.pop(), plan.total
    ensure_space(out_dir, n * h * w * c, f"the image store ({n} images of {h}x{w}x{c})")
    images = np.lib.format.open_memmap(out_dir / IMAGES, mode="w+", dtype=np.uint8, shape=(n, h, w, c))
    reserve(out_dir / IMAGES, (out_dir / IMAGES).stat().st_size)
    del images  # created; the decoders write through their own maps of the file
    sha = np.empty(n, dtype=object)
    mean, std = np.empty(n), np.empty(n)
    columns: dict[str, list] = {"split": [], "source": [], "index": [], "label": [], "source_size": []}
    row = 0
    with progress_bar(n, "prepare", "img", enabled=progress) as bar:
        for part, (digests, means, stds) in zip(plan.parts, decode_into(plan, out_dir / IMAGES, workers), strict=True):
            sha[row : row + part.count] = digests
            mean[row : row + part.count], std[row : row + part.count] = means, stds
            columns["split"] += [part.split] * part.count
            columns["source"] += [part.source] * part.count
            columns["index"] += range(part.count)  # position within the source file
            columns["label"] += [None] * part.count if part.labels is None else part.labels.tolist()
            columns["source_size"] += [part.source_size or part.shape[:2]] * part.count
            row += part.count
            bar.update(part.count)
    labels = pd.array(columns["label"], dtype="Int64")
    names = np.asarray(plan.classes, dtype=object)
    manifest = pd.DataFrame(
        {
            "split": columns["split"],
            "source": columns["source"],
            "index": columns["index"],
            "label": labels,
            "class_name": [None if pd.isna(v) else names[v] if 0 <= v < len(names) else None for v in labels],
            "height": h,
            "width": w,
            "channels": c,
            "source_height": [hw[0] for hw in columns["source_size"]],
            "source_width": [hw[1] for hw in columns["source_size"]],
            "sha256": sha,
            "mean": mean,
            "std": std,
        }
    ).astype(MANIFEST_COLUMNS)
    manifest.to_parquet(out_dir / MANIFEST, index=False)
    (out_dir / CLASSES).write_text(json.dumps(plan.classes, indent=2) + "\n")
    return manifest


def manifest_digest(manifest: pd.DataFrame) -> str:
    """A content digest of the whole manifest (every row and column), stable across runs and machines."""
    hashed = pd.util.hash_pandas_object(manifest, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def rows_digest(manifest: pd.DataFrame, rows: np.ndarray) -> str:
    """A digest of some images and their labels (sha256 and label per row, in row order): the identity of an
    evaluation set, so scores are compared only when they were measured on the same images."""
    picked = manifest.iloc[np.asarray(rows)][["sha256", "label"]].astype({"label": "Int64"})
    return manifest_digest(picked.reset_index(drop=True))


@dataclass(frozen=True)
class ImageStore:
    """Read side of the canonical store: images memory-mapped, manifest and class names loaded."""

    images: np.ndarray
    manifest: pd.DataFrame
    classes: list[str]

    @classmethod
    def open(cls, folder: Path) -> ImageStore:
        missing = [name for name in (IMAGES, MANIFEST, CLASSES) if not (folder / name).is_file()]
        if missing:
            raise SslopsError(
                f"{folder}: prepared store is incomplete (missing {', '.join(missing)}); run the prepare stage."
            )
        images = np.load(folder / IMAGES, mmap_mode="r")
        manifest = pd.read_parquet(folder / MANIFEST)
        if len(manifest) != len(images):
            raise SslopsError(f"{folder}: manifest has {len(manifest)} rows but images.npy holds {len(images)} images.")
        return cls(images, manifest, json.loads((folder / CLASSES).read_text()))

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of one split and their labels (-1 where unlabeled)."""
        rows = np.flatnonzero((self.manifest["split"] == name).to_numpy())
        return rows, self.manifest["label"].iloc[rows].fillna(-1).to_numpy(dtype=np.int64)

    def labelled(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Rows and labels of the labelled images of a split; an error when it has none (transfer needs labels)."""
        rows, labels = self.split(name)
        keep = labels >= 0
        if not keep.any():
            raise SslopsError(f"the {name} split has no labelled images: monitoring and transfer need labels.")
        return rows[keep], labels[keep]
