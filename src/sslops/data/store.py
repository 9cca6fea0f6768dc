"""The canonical image store: the images (N x H x W x C, uint8 when read) plus a manifest table.

The images are kept either raw, one memory-mappable uint8 array (images.npy: small images, read at memory speed),
or encoded as JPEG in shards (`sslops.data.encoded`: photos, a tenth of the bytes, decoded when read); `Codec` and
`prepare.store` choose. Every later stage reads images through `ImageStore`, whatever the raw format or the codec,
and the manifest (one row per image, same order) is what Great Expectations validates and MLflow logs as the
dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sslops.data import encoded
from sslops.data.decode import Stats, decode_into, encode_parts
from sslops.data.encoded import Codec, EncodedImages
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


RAW = Codec("raw")


def write_store(plan: Plan, out_dir: Path, progress: bool = True, workers: int = 1, codec: Codec = RAW) -> Written:
    """Fill `out_dir` with the images (raw: images.npy; jpeg: shards, index and spec), manifest.parquet and
    classes.json from `plan`; return its row counts and digest (the manifest itself is streamed to its file).

    Images are written part by part (raw: into the .npy file at each part's rows), so datasets larger than RAM
    work. Up to `workers` processes decode the parts (and encode them, hash them and take their statistics), in plan
    order: the store is the same byte for byte whatever the number. `out_dir` should be a temporary directory (see
    `sslops.outputs.atomic.atomic_dir`): a part that fails to decode leaves nothing behind.
    """
    if plan.total == 0:
        raise SslopsError("The data folder holds no images.")
    shapes = plan.shapes
    if len(shapes) != 1:
        raise SslopsError(f"Images have different shapes {sorted(shapes)}; one size and channel count is required.")
    (h, w, c), n = shapes.pop(), plan.total
    if codec.format == "raw":
        ensure_space(out_dir, n * h * w * c, f"the image store ({n} images of {h}x{w}x{c})")
        images = np.lib.format.open_memmap(out_dir / IMAGES, mode="w+", dtype=np.uint8, shape=(n, h, w, c))
        reserve(out_dir / IMAGES, (out_dir / IMAGES).stat().st_size)
        del images  # created; the decoders write into the file with pwrite
        results = decode_into(plan, out_dir / IMAGES, workers)
    else:  # the bytes are known only once encoded: the disk is checked shard by shard
        writer = encoded.ShardWriter(out_dir, codec, (h, w, c), n)
        results = _written(writer, encode_parts(plan, codec.quality, workers))
    rows = ManifestWriter(out_dir / MANIFEST, plan.classes, (h, w, c))
    with progress_bar(n, "prepare", "img", enabled=progress) as bar:
        for part, stats in zip(plan.parts, results, strict=True):
            rows.add(part, stats)
            bar.update(part.count)
    if codec.format != "raw":
        writer.close()
    written = rows.close()
    (out_dir / CLASSES).write_text(json.dumps(plan.classes, indent=2) + "\n")
    return written


@dataclass(frozen=True)
class Written:
    """What write_store wrote, without holding the manifest: its rows per split and its digest (`manifest_digest`
    of the whole table, computed chunk by chunk as it was written)."""

    rows: int
    splits: dict[str, int]
    digest: str


class ManifestWriter:
    """The manifest written in Parquet row groups of `CHUNK` rows as the parts come, so that its memory does not
    grow with the dataset (a million rows held as a DataFrame cost hundreds of MB, twice over while converted)."""

    CHUNK = 2_048  # rows per row group: the rows of a chunk wait as Python objects, several hundred bytes each

    def __init__(self, path: Path, classes: list[str], shape: tuple[int, int, int]):
        self.path, self.classes, self.shape = path, np.asarray(classes, dtype=object), shape
        self.parts: list[tuple[Any, Stats]] = []
        self.pending = 0
        self.writer: Any = None
        self.digest = ManifestDigest()
        self.splits: dict[str, int] = {}
        self.rows = 0

    def add(self, part: Any, stats: Stats) -> None:
        self.parts.append((part, stats))
        self.pending += part.count
        if self.pending >= self.CHUNK:
            self._flush()

    def close(self) -> Written:
        import pyarrow as pa

        self._flush()
        if self.writer is not None:
            self.writer.close()
        pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed blocks until told
        return Written(self.rows, self.splits, self.digest.hexdigest())

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.parts:
            return
        frame = self._frame()
        self.parts, self.pending = [], 0
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)
        pa.default_memory_pool().release_unused()
        self.digest.update(frame)
        for split, count in frame["split"].value_counts().items():
            self.splits[split] = self.splits.get(split, 0) + int(count)
        self.rows += len(frame)

    def _frame(self) -> pd.DataFrame:
        """The pending parts' rows, columns filled as arrays (Python lists of a chunk would cost several times more)."""
        n = self.pending
        split, source, sha = (np.empty(n, dtype=object) for _ in range(3))
        index, label, source_height, source_width = (np.empty(n, dtype=np.int64) for _ in range(4))
        unlabeled = np.zeros(n, dtype=bool)
        mean, std = np.empty(n), np.empty(n)
        row = 0
        for part, (digests, means, stds) in self.parts:
            rows = slice(row, row + part.count)
            sha[rows], mean[rows], std[rows] = digests, means, stds
            split[rows], source[rows] = part.split, part.source
            index[rows] = np.arange(part.count)  # position within the source file
            if part.labels is None:
                label[rows], unlabeled[rows] = 0, True
            else:
                label[rows] = part.labels
            source_height[rows], source_width[rows] = part.source_size or part.shape[:2]
            row += part.count
        named = ~unlabeled & (label >= 0) & (label < len(self.classes))
        class_name = np.full(n, None, dtype=object)
        class_name[named] = self.classes[label[named]]
        h, w, c = self.shape
        return pd.DataFrame(
            {
                "split": split,
                "source": source,
                "index": index,
                "label": pd.arrays.IntegerArray(label, unlabeled),
                "class_name": class_name,
                "height": h,
                "width": w,
                "channels": c,
                "source_height": source_height,
                "source_width": source_width,
                "sha256": sha,
                "mean": mean,
                "std": std,
            }
        ).astype(MANIFEST_COLUMNS)


def _written(writer: encoded.ShardWriter, parts: Iterator[tuple[list[bytes], int, Stats]]) -> Iterator[Stats]:
    """Each part's statistics, once its bytes are in the store."""
    for blobs, kept, stats in parts:
        writer.add(blobs, kept)
        yield stats


DIGEST_ROWS = 65_536  # rows hashed at a time: hashing a string column converts it to Python objects first


def manifest_digest(manifest: pd.DataFrame) -> str:
    """A content digest of the whole manifest (every row and column), stable across runs and machines. Hashed
    DIGEST_ROWS rows at a time, so that its transient memory is one chunk's, not hundreds of bytes per row."""
    digest = ManifestDigest()
    for start in range(0, len(manifest), DIGEST_ROWS):
        digest.update(manifest.iloc[start : start + DIGEST_ROWS])
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """`manifest_digest` of a manifest file, read one row group at a time (the stages that only check which data
    they were given need not hold the table)."""
    import pyarrow.parquet as pq

    groups, digest = pq.ParquetFile(path), ManifestDigest()
    for i in range(groups.num_row_groups):
        digest.update(groups.read_row_group(i).to_pandas())
    return digest.hexdigest()


class ManifestDigest:
    """A manifest's digest built from its rows chunk by chunk, for whoever reads or writes it in chunks anyway (the
    writer, validate's SQLite load). hash_pandas_object hashes row by row, so the chunks' bytes, one after another,
    are the whole table's: the same digest for any chunking."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def update(self, rows: pd.DataFrame) -> None:
        self._sha.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())

    def hexdigest(self) -> str:
        return self._sha.hexdigest()[:16]


def read_manifest(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A manifest file as a DataFrame, its strings kept in Arrow buffers (about 210 bytes a row), and the blocks
    Arrow's allocator freed while reading handed back: without that, the process kept 1.7 times as much."""
    import pyarrow as pa

    frame = pd.read_parquet(path, columns=columns)
    pa.default_memory_pool().release_unused()
    return frame


def rows_digest(manifest: pd.DataFrame, rows: np.ndarray) -> str:
    """A digest of some images and their labels (sha256 and label per row, in row order): the identity of an
    evaluation set, so scores are compared only when they were measured on the same images."""
    picked = manifest.iloc[np.asarray(rows)][["sha256", "label"]].astype({"label": "Int64"})
    return manifest_digest(picked.reset_index(drop=True))


@dataclass(frozen=True)
class ImageStore:
    """Read side of the canonical store: images memory-mapped (raw) or decoded when indexed (JPEG), manifest and
    class names loaded. `images[rows]` is a uint8 (len(rows), H, W, C) array either way."""

    images: np.ndarray | EncodedImages
    manifest: pd.DataFrame
    classes: list[str]

    @property
    def encoded(self) -> bool:
        return isinstance(self.images, EncodedImages)

    def take(self, rows: np.ndarray) -> np.ndarray | encoded.Rows:
        """Images `rows` for a reader that goes through them batch by batch: raw, an array (a memory-speed gather);
        JPEG, a view that decodes each batch as it is sliced, so memory holds a batch, not every row."""
        return encoded.Rows(self.images, rows) if isinstance(self.images, EncodedImages) else self.images[rows]

    @classmethod
    def open(cls, folder: Path, columns: list[str] | None = None) -> ImageStore:
        """The store in `folder`; with `columns`, only those of the manifest (a stage that only needs the splits
        holds 10 bytes a row instead of 200)."""
        kept = encoded.SPEC if (folder / encoded.SPEC).is_file() else IMAGES
        missing = [name for name in (kept, MANIFEST, CLASSES) if not (folder / name).is_file()]
        if missing:
            raise SslopsError(
                f"{folder}: prepared store is incomplete (missing {', '.join(missing)}); run the prepare stage."
            )
        images = EncodedImages(folder) if kept == encoded.SPEC else np.load(folder / IMAGES, mmap_mode="r")
        manifest = read_manifest(folder / MANIFEST, columns)
        if len(manifest) != len(images):
            raise SslopsError(f"{folder}: manifest has {len(manifest)} rows but {kept} holds {len(images)} images.")
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
