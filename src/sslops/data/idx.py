"""MNIST-family IDX files (MNIST, Fashion-MNIST, KMNIST, ...), raw or gzip-compressed.

Format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number `0 0 <dtype> <ndim>`, then `ndim`
big-endian uint32 sizes, then the data. Images are `0 0 0x08 3` (uint8, N x H x W), labels `0 0 0x08 1`.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np

from sslops.data.sources import Part, Plan
from sslops.errors import SslopsError

UBYTE = 0x08
MAX_GZIP_RATIO = 1032  # DEFLATE inflates at most 1032:1 (a 258-byte match costs at least 2 bits): a bound per file
# Split name -> the file-name prefixes used for it by the MNIST family.
PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx_header(path: Path) -> tuple[tuple[int, ...], int]:
    """Return (shape, header length) of an IDX file, checking its magic number."""
    try:
        with _open(path) as fh:
            head = fh.read(4)
            if len(head) < 4:
                raise SslopsError(f"{path}: file is empty or truncated (no IDX magic number).")
            zero1, zero2, dtype, ndim = head
            if zero1 or zero2 or dtype != UBYTE or not 1 <= ndim <= 4:
                raise SslopsError(
                    f"{path}: wrong IDX magic number {head.hex()} (expected 000008 followed by the number "
                    "of dimensions, e.g. 00000803 for images, 00000801 for labels). Is this an IDX file?"
                )
            dims = fh.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise SslopsError(f"{path}: truncated IDX header.")
    except (OSError, EOFError, zlib.error) as exc:
        raise SslopsError(f"{path}: cannot be read as IDX ({exc}); the file is corrupt or not gzip.") from None
    return tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4)), 4 + 4 * ndim


def read_idx(path: Path) -> np.ndarray:
    """Read a whole IDX file into a uint8 array, failing clearly on a truncated, corrupt or oversized file.

    Only the bytes the header promises (plus one, to detect trailing data) are decompressed, and the promise is
    checked first against what the file can hold, so a gzip bomb cannot fill memory.
    """
    shape, offset = read_idx_header(path)
    expected = int(np.prod(shape))
    capacity = path.stat().st_size * (MAX_GZIP_RATIO if path.suffix == ".gz" else 1)
    if offset + expected > capacity:
        raise SslopsError(
            f"{path}: header declares shape {shape} ({expected} bytes of data), more than a file of "
            f"{path.stat().st_size} bytes can hold: the file is truncated, corrupt or not an IDX file."
        )
    try:
        with _open(path) as fh:
            raw = fh.read(offset + expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise SslopsError(f"{path}: cannot be decompressed ({exc}); the file is truncated or corrupt.") from None
    data = raw[offset:]
    if len(data) != expected:
        found = "more (trailing data)" if len(data) > expected else f"{len(data)} bytes"
        raise SslopsError(
            f"{path}: truncated or corrupt IDX file: header declares shape {shape} ({expected} bytes of data) "
            f"but {found} follow."
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _pixels(path: Path) -> np.ndarray:
    """An IDX image file as (N, H, W, 1): a part's `load`, a module-level function so it can run in a worker."""
    return read_idx(path)[..., None]


def _find(root: Path, split: str, kind: str) -> Path:
    for prefix in PREFIXES[split]:
        for suffix in ("", ".gz"):
            candidate = root / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    names = " or ".join(f"{p}-{kind}-idx*-ubyte[.gz]" for p in PREFIXES[split])
    raise SslopsError(f"{root}: no {split} {kind} file found (looked for {names}).")


def plan_idx(root: Path, classes: list[str]) -> Plan:
    """Plan the train and test splits of an MNIST-family folder; labels are checked against images now."""
    parts = []
    for split in ("train", "test"):
        images_path, labels_path = _find(root, split, "images"), _find(root, split, "labels")
        shape, _ = read_idx_header(images_path)
        if len(shape) != 3:
            raise SslopsError(f"{images_path}: expected a 3-D IDX image file (N x H x W), found shape {shape}.")
        labels = read_idx(labels_path)
        if labels.ndim != 1:
            raise SslopsError(f"{labels_path}: expected a 1-D IDX label file, found shape {labels.shape}.")
        if len(labels) != shape[0]:
            raise SslopsError(
                f"{labels_path} holds {len(labels)} labels but {images_path} holds {shape[0]} images: "
                "every image needs exactly one label."
            )
        n, h, w = shape
        parts.append(
            Part(
                split=split,
                source=images_path.name,
                count=n,
                shape=(h, w, 1),
                labels=labels.astype(np.int64),
                load=functools.partial(_pixels, images_path),
            )
        )
    n_classes = int(max(int(p.labels.max()) for p in parts if p.labels is not None and p.count)) + 1
    names = list(classes) + [str(i) for i in range(len(classes), n_classes)]
    return Plan(parts=parts, classes=names)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip when the name ends in .gz); used to make test data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb") as fh:
        fh.write(header + array.tobytes())
