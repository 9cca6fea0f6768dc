"""The default dense task: scenes of Fashion-MNIST items on textured backgrounds, with exact boxes and masks.

Each scene is a `SIDE` x `SIDE` grayscale image holding 1 to `MAX_ITEMS` Fashion-MNIST items, each scaled to 20-44
px and placed so that later items partly cover earlier ones (no item keeps less than half of itself visible). Train
scenes draw their items from Fashion-MNIST's train split only and test scenes from its test split only, so no test
item was ever seen in training, here or during pretraining. An item's pixels are the ones of value `INK` or more
after scaling; its visible pixels are its mask, its box the box around them.

Written per split (`<split>/images/NNNNNN.png`, `<split>/masks/NNNNNN.png`, `<split>/annotations.json`):
semantic masks (one class id per pixel: 0 background, 1 + the Fashion-MNIST label for items) and COCO JSON (boxes
`[x, y, w, h]`, areas and instance masks as uncompressed RLE). `SHA256SUMS` lists every file.

Byte for byte on any machine, like the digits export: every random choice comes from an integer hash of (scene,
draw) rather than a NumPy generator (whose streams may change between versions), scaling is nearest-neighbour in
integer arithmetic, the PNGs are written here with stored (uncompressed) deflate blocks (zlib's compressed output
depends on its version) and the JSON with sorted keys. `generate` checks the whole folder against `DIGEST`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslops.data.idx import read_idx
from sslops.errors import SslopsError

SIDE = 96
MAX_ITEMS = 4
SCALES = (20, 44)  # item side in px, inclusive
INK = 32  # item pixels at least this bright are the item (Fashion-MNIST's background is 0)
MIN_VISIBLE = 0.5  # an item covered beyond this share is not placed
COUNTS = {"train": 2000, "test": 500}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SUMS = "SHA256SUMS"
# sha256 of SHA256SUMS for COUNTS: every file's bytes, as generated from Debian's dataset-fashion-mnist.
DIGEST = "be41fc7b12ada1feb017cc58e63ac6d62a2666d33c119bc36e134f3d86558fb4"
IDX = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABELS = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
MASK32 = 0xFFFFFFFF


def _mix(values: np.ndarray) -> np.ndarray:
    """An integer hash of uint64 values (the finaliser of MurmurHash3, on 32 bits): uniform, exact everywhere."""
    x = values & MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def _draws(key: int, count: int) -> list[int]:
    """`count` pseudo-random 32-bit integers for one scene (`key` names the split and scene)."""
    seeds = np.arange(count, dtype=np.uint64) + np.uint64((key * 1_000_003) & MASK32)
    return [int(v) for v in _mix(_mix(seeds) + np.uint64(key))]


def _background(draws: list[int]) -> np.ndarray:
    """A texture: blocks of random gray (value noise at a random cell size) plus diagonal stripes."""
    cell = (4, 6, 8, 12)[draws[0] % 4]
    cells = SIDE // cell
    seeds = np.arange(cells * cells, dtype=np.uint64) + np.uint64(draws[1])
    levels = (_mix(seeds) % np.uint64(40 + draws[2] % 60)).astype(np.int64).reshape(cells, cells)
    texture = np.repeat(np.repeat(levels, cell, 0), cell, 1)
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    period, slope = 6 + draws[3] % 10, 1 + draws[4] % 3
    stripes = ((x + slope * y) // period) % 2 * (draws[5] % 40)
    return (texture + stripes).astype(np.uint8)


def _scaled(item: np.ndarray, side: int) -> np.ndarray:
    """A 28 x 28 item at `side` px, nearest neighbour by integer index arithmetic."""
    index = (np.arange(side) * item.shape[0]) // side
    return item[np.ix_(index, index)]


@dataclass(frozen=True)
class Scene:
    """One composed scene: the pixels and each placed item's visible pixels, from which both label files follow."""

    image: np.ndarray  # SIDE x SIDE uint8
    instances: list[tuple[int, np.ndarray]]  # (label, visible mask) per item, in drawing order

    def semantic(self) -> np.ndarray:
        """The class mask: 0 background, 1 + label where an item is visible."""
        mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
        for label, visible in self.instances:
            mask[visible] = label + 1
        return mask


def compose(key: int, items: np.ndarray, labels: np.ndarray) -> Scene:
    """Scene `key` from the items of one split."""
    draws = _draws(key, 7 + 4 * 8 * MAX_ITEMS)
    image = _background(draws)
    owner = np.full((SIDE, SIDE), -1)
    chosen: list[int] = []
    areas: list[int] = []  # each placed item's own pixel count
    wanted = 1 + draws[6] % MAX_ITEMS
    for attempt in range(8 * MAX_ITEMS):
        if len(chosen) == wanted:
            break
        pick, size, top, left = draws[7 + 4 * attempt : 11 + 4 * attempt]
        index = pick % len(items)
        side = SCALES[0] + size % (SCALES[1] - SCALES[0] + 1)
        pixels = _scaled(items[index], side)
        ink = pixels >= INK
        y, x = top % (SIDE - side + 1), left % (SIDE - side + 1)
        trial = owner.copy()
        trial[y : y + side, x : x + side][ink] = len(chosen)
        # every item already placed (and this one) must keep at least MIN_VISIBLE of its pixels
        if all((trial == k).sum() >= MIN_VISIBLE * area for k, area in enumerate(areas)) and ink.any():
            owner = trial
            image[y : y + side, x : x + side][ink] = pixels[ink]
            chosen.append(int(labels[index]))
            areas.append(int(ink.sum()))
    return Scene(image, [(label, owner == k) for k, label in enumerate(chosen) if (owner == k).any()])


def rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a boolean mask: run lengths in column-major order, starting with background."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def box(mask: np.ndarray) -> list[int]:
    """`[x, y, width, height]` of the pixels of `mask`, in whole pixels (COCO's layout)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def png(pixels: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of `pixels` with stored deflate blocks: the same bytes on every machine."""
    height, width = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(height))  # filter type 0 per row
    blocks = [raw[i : i + 65535] for i in range(0, len(raw), 65535)] or [b""]
    stream = b"\x78\x01" + b"".join(
        struct.pack("<BHH", int(i == len(blocks) - 1), len(b), len(b) ^ 0xFFFF) + b for i, b in enumerate(blocks)
    )
    stream += struct.pack(">I", zlib.adler32(raw))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def _coco(split: str, scenes: list[Scene]) -> dict:
    images, annotations = [], []
    for i, scene in enumerate(scenes):
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "height": SIDE, "width": SIDE})
        for label, visible in scene.instances:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": box(visible),
                    "area": int(visible.sum()),
                    "iscrowd": 0,
                    "segmentation": rle(visible),
                }
            )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    info = {"description": f"sslops scenes from Fashion-MNIST's {split} split"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _write_split(folder: Path, split: str, count: int, fashion: Path) -> dict[str, str]:
    """Write one split's scenes; return each file's sha256 by its path under the dataset folder."""
    items, labels = read_idx(fashion / IDX[split]), read_idx(fashion / LABELS[split])
    scenes = [compose((0 if split == "train" else 1 << 24) + i, items, labels) for i in range(count)]
    files: dict[str, bytes] = {}
    for i, scene in enumerate(scenes):
        files[f"{split}/images/{i:06d}.png"] = png(scene.image)
        files[f"{split}/masks/{i:06d}.png"] = png(scene.semantic())
    files[f"{split}/annotations.json"] = (json.dumps(_coco(split, scenes), sort_keys=True) + "\n").encode()
    sums = {}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


def generate(target: Path, fashion: Path, counts: dict[str, int] | None = None) -> dict:
    """Make sure `target` holds the scenes (default: `COUNTS`, checked against `DIGEST`); return what it holds.

    A folder whose SHA256SUMS matches `DIGEST` and whose files match it is left untouched. Otherwise every file is
    generated into a temporary folder beside `target` and moved in only once complete (and, at the default counts,
    once it matches `DIGEST`), so a failed run leaves no half-written folder.
    """
    counts = counts or COUNTS
    checked = counts == COUNTS and bool(DIGEST)
    if checked and _verified(target):
        return {"scenes": counts, "classes": len(CLASSES), "verified": True}
    missing = [path for path in IDX.values() if not (fashion / path).is_file()]
    if missing:
        raise SslopsError(f"{fashion} lacks {', '.join(missing)}: the scenes are made of Fashion-MNIST (make data).")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        sums: dict[str, str] = {}
        for split, count in counts.items():
            sums |= _write_split(Path(tmp), split, count, fashion)
        listing = "".join(f"{sha}  {name}\n" for name, sha in sorted(sums.items())).encode()
        (Path(tmp) / SUMS).write_bytes(listing)
        digest = hashlib.sha256(listing).hexdigest()
        if checked and digest != DIGEST:
            raise SslopsError(
                f"the generated scenes have digest {digest[:12]}..., not the recorded {DIGEST[:12]}...: the "
                f"Fashion-MNIST files in {fashion} differ from Debian's dataset-fashion-mnist, or the generator "
                "changed without its DIGEST (sslops.data.scenes) being re-recorded."
            )
        if target.exists():
            _replace_tree(target)
        os.replace(tmp, target)
        os.mkdir(tmp)  # TemporaryDirectory removes it again on exit
    return {"scenes": counts, "classes": len(CLASSES), "verified": checked, "digest": digest}


def _replace_tree(target: Path) -> None:
    """Move an outdated folder aside and remove it (after the new one is complete, never before)."""
    import shutil

    old = target.with_name(f".{target.name}-old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    shutil.rmtree(old)


def _verified(folder: Path) -> bool:
    sums = folder / SUMS
    if not sums.is_file() or hashlib.sha256(sums.read_bytes()).hexdigest() != DIGEST:
        return False
    for line in sums.read_text().splitlines():
        sha, name = line.split("  ", 1)
        path = folder / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            return False
    return True
