"""The compressed image store: every image kept encoded (JPEG) in shards, decoded when it is read.

A raw uint8 store of real photos is 10 to 20 times their JPEG files (a 224 px RGB image: 147 KiB against about
15 KiB), so a million of them would be 150 GB of disk and page cache; the JPEG store keeps them near the size of the
files and pays a decode per read instead (bench/store_formats.py, docs/benchmarks.md). Layout, in the prepared
folder beside the manifest:

- `shards/NNNNN.bin`: the encoded images of `SHARD_IMAGES` consecutive rows, back to back;
- `index.npy`: int64 (N, 2), each row's offset in its shard and its size in bytes;
- `store.json`: the codec, its quality, the decoded shape, the shard size and how many images kept their source
  file's bytes (a JPEG already at the stored size and colour mode is copied, not re-encoded: no second loss).

The manifest's sha256, mean and std are those of the pixels a reader decodes from the stored bytes, so validation's
duplicate and leakage checks see what training sees. Pillow decodes here; pretraining's loader may decode with
torchvision.io, which links the same libjpeg-turbo and gives the same pixels (tested).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sslops.errors import SslopsError
from sslops.outputs.atomic import ensure_space

SPEC = "store.json"
INDEX = "index.npy"
SHARDS = "shards"
SHARD_IMAGES = 8192  # rows per shard: 120 MB of 224 px JPEGs, a unit a node can fetch and a stage can write at once
WRITE_BUFFER = 1 << 20  # bytes a shard file buffers: a few KB an image, written one by one
# `format: auto` keeps images of this many pixels (64x64) and more as JPEG (bench/store_formats.py,
# docs/benchmarks.md): at 28 px (Fashion-MNIST) a JPEG is 735 B against 784 raw, and lossy; the saving grows with the
# size (48 px RGB 4.8x, 64 px 6.1x, 224 px 9.8x smaller) and the loss shrinks (30.9, 31.7, 34.3 dB PSNR at quality
# 90), while raw reads cost nothing and one core decodes 19,000 JPEGs of 64 px a second. Small images stay raw.
AUTO_JPEG_PIXELS = 64 * 64


@dataclass(frozen=True)
class Codec:
    """How images are kept: `raw` uint8, or `jpeg` at `quality` (1-100)."""

    format: str
    quality: int = 90

    def record(self) -> dict[str, Any]:
        return {"format": self.format, "quality": self.quality}


def choose(fmt: str, quality: int, shape: tuple[int, int, int]) -> Codec:
    """The codec `prepare.store` asks for on images of `shape`."""
    if fmt == "auto":
        fmt = "jpeg" if shape[0] * shape[1] >= AUTO_JPEG_PIXELS else "raw"
    return Codec(fmt, quality)


def encode(pixels: np.ndarray, quality: int) -> bytes:
    """One uint8 (H, W, C) image as JPEG bytes (4:2:0 chroma for RGB, Pillow's default at quality < 95)."""
    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode(blob: bytes | memoryview, shape: tuple[int, int, int]) -> np.ndarray:
    """The uint8 pixels of one stored image; an error naming the shape when the bytes decode to another."""
    with Image.open(io.BytesIO(blob)) as img:
        pixels = np.asarray(img.convert("L" if shape[2] == 1 else "RGB"), dtype=np.uint8)
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], shape[2])
    if pixels.shape != shape:
        raise SslopsError(f"a stored image decodes to {pixels.shape}, not the store's {shape}: the store is damaged.")
    return pixels


class ShardWriter:
    """Appends encoded images, in row order, to `folder`'s shards and index; `close()` writes the spec."""

    def __init__(self, folder: Path, codec: Codec, shape: tuple[int, int, int], total: int) -> None:
        self.folder, self.codec, self.shape, self.total = folder, codec, shape, total
        (folder / SHARDS).mkdir(parents=True, exist_ok=True)
        self.index = np.empty((total, 2), dtype=np.int64)
        self.row, self.kept, self.offset = 0, 0, 0
        self.file: io.BufferedWriter | None = None

    def add(self, blobs: list[bytes], kept: int) -> None:
        """Write the next rows' bytes; `kept` of them are their source files' own bytes."""
        for blob in blobs:
            if self.row % SHARD_IMAGES == 0:
                self._next_shard()
            assert self.file is not None
            self.index[self.row] = (self.offset, len(blob))
            self.file.write(blob)
            self.offset += len(blob)
            self.row += 1
        self.kept += kept

    def _next_shard(self) -> None:
        if self.file is not None:
            self.file.close()
        # A shard's bytes at the average so far (the first: raw pixels, an upper bound), before it is started.
        per_image = self.index[: self.row, 1].mean() if self.row else np.prod(self.shape)
        rows = min(SHARD_IMAGES, self.total - self.row)
        ensure_space(self.folder, int(per_image * rows), "the next shard of the JPEG store")
        self.file = open(self.folder / SHARDS / f"{self.row // SHARD_IMAGES:05d}.bin", "wb", buffering=WRITE_BUFFER)  # noqa: SIM115
        self.offset = 0

    def close(self) -> None:
        """Finish the store: the index, and the spec that makes it a store."""
        if self.file is not None:
            self.file.close()
        if self.row != self.total:
            raise SslopsError(f"the encoded store got {self.row} images, {self.total} were planned.")
        np.save(self.folder / INDEX, self.index)
        spec = {
            **self.codec.record(),
            "shape": list(self.shape),
            "images": self.total,
            "shard_images": SHARD_IMAGES,
            "shards": -(-self.total // SHARD_IMAGES),
            "source_bytes_kept": self.kept,
        }
        (self.folder / SPEC).write_text(json.dumps(spec, indent=2) + "\n")


class EncodedImages:
    """An (N, H, W, C) uint8 array over a JPEG store, as the raw store's memory map reads: `images[rows]` decodes
    those rows (an int gives one image), `shape`, `len()`. Shards are memory-mapped, so opening costs nothing and
    worker processes that get a copy map them again."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            spec = json.loads((folder / SPEC).read_text())
            self.index = np.load(folder / INDEX)
        except (OSError, ValueError) as exc:
            raise SslopsError(f"{folder}: the encoded store cannot be read ({exc}); run the prepare stage.") from None
        self.spec = spec
        self.shape: tuple[int, int, int, int] = (int(spec["images"]), *map(int, spec["shape"]))
        self.shard_images = int(spec["shard_images"])
        if self.index.shape != (self.shape[0], 2):
            raise SslopsError(f"{folder / INDEX}: {self.index.shape[0]} rows, the spec says {self.shape[0]} images.")
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:  # to a DataLoader worker: paths and index, not the maps
        return {**self.__dict__, "_shards": {}}

    def blob(self, row: int) -> memoryview:
        """The stored bytes of one row (a view into its shard's map)."""
        shard = row // self.shard_images
        if shard not in self._shards:
            path = self.folder / SHARDS / f"{shard:05d}.bin"
            self._shards[shard] = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.empty(0)
        offset, size = self.index[row]
        return memoryview(self._shards[shard][offset : offset + size])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return decode(self.blob(range(len(self))[key]), self.shape[1:])
        rows = np.arange(len(self))[key]
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for i, row in enumerate(rows):
            out[i] = decode(self.blob(int(row)), self.shape[1:])
        return out


class Rows:
    """Some rows of an encoded store, decoded only when sliced: what a batch-by-batch reader (features, predictions)
    takes instead of an array, so that reading N images holds one batch of pixels, not N."""

    dtype = np.dtype(np.uint8)

    def __init__(self, images: EncodedImages, rows: np.ndarray) -> None:
        self.images, self.rows = images, np.asarray(rows)
        self.shape = (len(self.rows), *images.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.images[self.rows[key]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:  # np.array(rows): all of them, decoded
        return self.images[self.rows] if dtype is None else self.images[self.rows].astype(dtype)
