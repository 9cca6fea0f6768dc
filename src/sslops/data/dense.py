"""Readers for dense labels: COCO JSON (boxes, instance masks) and mask folders (one class id per pixel).

Layouts, per split (`train`, `test`) under a task's root:

- `coco`: `<split>/annotations.json` (COCO's `images`, `annotations`, `categories`) beside `<split>/images/`;
  boxes `[x, y, width, height]` in pixels, instance masks as polygons or RLE (kept as given).
- `masks`: `<split>/images/<name>.<png|jpg>` beside `<split>/masks/<name>.png`, a single-channel PNG holding a
  class id per pixel: 0 .. classes - 1, or the ignore value (pixels no loss or metric counts).

The same trust rules as every image a user hands over (`sslops.data.images`: size limit before decoding, no link
out of the data folder, no special file), JSON parsed as data only (no pickle, no code), a size limit on it before
it is read. Every problem is collected and reported at once, each naming its file and record (the annotation's id,
the image's file name), so one look shows everything there is to fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sslops.data import images
from sslops.data.imagefolder import IGNORED
from sslops.errors import SslopsError

if TYPE_CHECKING:
    import pandas as pd

ANNOTATIONS = "annotations.json"
MAX_JSON_BYTES = 1 << 30  # a COCO file larger than this is refused before it is parsed


class DenseRejected(SslopsError):
    """Dense labels that cannot be used; the message lists every problem found, each with its file and record."""


@dataclass(frozen=True)
class DenseImage:
    """One labelled image: its file (relative to the task's root), size, and boxes or mask file."""

    file: str
    height: int
    width: int
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2 in pixels
    labels: np.ndarray  # (n,) int64, 0-based class index
    segments: tuple = ()  # per box: its COCO segmentation (polygons or RLE), or None
    mask: str | None = None  # `masks` layout: the mask file, relative to the task's root


@dataclass(frozen=True)
class DenseSplit:
    """A split's labelled images and the class names their labels index."""

    images: list[DenseImage]
    classes: list[str]


def _refuse(where: Path, problems: list[str]) -> None:
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems[: images.LISTED])
        more = f"\n  ... and {len(problems) - images.LISTED} more" if len(problems) > images.LISTED else ""
        raise DenseRejected(f"{where}: {len(problems)} problem(s) with its labels; fix them:\n{listed}{more}")


def _load_json(path: Path, root: Path) -> dict:
    if not path.is_file():
        raise DenseRejected(f"{path}: missing; a COCO task needs <split>/{ANNOTATIONS} beside <split>/images/.")
    images.check_path(path, root)
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise DenseRejected(f"{path}: {size:,} bytes, more than the {MAX_JSON_BYTES:,} a COCO file may have.")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DenseRejected(f"{path}: not valid JSON ({exc}).") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise DenseRejected(f"{path}: not COCO JSON (an object with lists 'images', 'annotations', 'categories').")
    if not isinstance(data.get("annotations", []), list):
        raise DenseRejected(f"{path}: 'annotations' is not a list.")
    return data


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _segment_problem(segment: object, height: int, width: int) -> str | None:
    """Why a COCO segmentation does not fit its image, or None."""
    if segment is None or segment == []:
        return None
    if isinstance(segment, dict):
        size, counts = segment.get("size"), segment.get("counts")
        if size != [height, width]:
            return f"its RLE mask is {size}, the image is [{height}, {width}]"
        if isinstance(counts, list) and (
            not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width
        ):
            return f"its RLE counts do not cover the {height}x{width} image"
        if not isinstance(counts, (list, str)):
            return "its RLE counts are neither a list nor a string"
        return None
    if isinstance(segment, list) and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segment):
        coords = np.asarray([c for polygon in segment for c in polygon], dtype=object)
        if not all(_number(c) for c in coords):
            return "its polygon holds a value that is not a finite number"
        xs, ys = coords[0::2].astype(float), coords[1::2].astype(float)
        if xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height:
            return f"its polygon leaves the {width}x{height} image"
        return None
    return "its segmentation is neither polygons (lists of x, y pairs) nor an RLE object"


def read_coco(root: Path, split: str, max_pixels: int) -> DenseSplit:
    """The boxes (and instance masks) of `<root>/<split>/annotations.json`, every problem reported at once."""
    path = root / split / ANNOTATIONS
    data = _load_json(path, root)
    problems: list[str] = []
    categories: dict[int, str] = {}
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            problems.append(f"categories[{k}]: needs an integer 'id' and a string 'name'")
        elif cat["id"] in categories:
            problems.append(f"categories[{k}]: id {cat['id']} is declared twice")
        else:
            categories[cat["id"]] = cat["name"]
    order = sorted(categories)
    index_of = {cid: i for i, cid in enumerate(order)}
    found: dict[int, dict] = {}
    for k, img in enumerate(data["images"]):
        name = img.get("file_name") if isinstance(img, dict) else None
        if not isinstance(name, str) or not isinstance(img.get("id"), int):
            problems.append(f"images[{k}]: needs an integer 'id' and a string 'file_name'")
            continue
        if img["id"] in found:
            problems.append(f"images[{k}] ({name}): id {img['id']} is used twice")
            continue
        file = root / split / "images" / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"images[{k}] ({name}): file_name must be a path inside {split}/images/")
            continue
        try:
            head = images.inspect(file, root, max_pixels)
        except images.ImageRejected as exc:
            problems.append(f"images[{k}] ({name}): {exc.reason}")
            continue
        declared = (img.get("height"), img.get("width"))
        if declared != (None, None) and declared != (head.height, head.width):
            problems.append(
                f"images[{k}] ({name}): declared {declared[1]}x{declared[0]}, the file is {head.width}x{head.height}"
            )
        found[img["id"]] = {"file": file.relative_to(root).as_posix(), "h": head.height, "w": head.width, "anns": []}
    for k, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            problems.append(f"annotations[{k}]: not an object")
            continue
        where = f"annotation {ann.get('id', f'[{k}]')}"
        image = found.get(ann.get("image_id"))  # type: ignore[arg-type]
        if image is None:
            problems.append(f"{where}: image_id {ann.get('image_id')!r} is not in images (or its image was refused)")
            continue
        where += f" ({image['file']})"
        if ann.get("category_id") not in categories:
            problems.append(f"{where}: category_id {ann.get('category_id')!r} is not declared in categories")
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            problems.append(f"{where}: bbox must be four finite numbers [x, y, width, height], not {bbox!r}")
            continue
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            problems.append(f"{where}: bbox {bbox} is degenerate (width and height must be positive)")
            continue
        if x < 0 or y < 0 or x + w > image["w"] or y + h > image["h"]:
            problems.append(f"{where}: bbox {bbox} leaves the {image['w']}x{image['h']} image")
            continue
        segment = ann.get("segmentation")
        why = _segment_problem(segment, image["h"], image["w"])
        if why:
            problems.append(f"{where}: {why}")
            continue
        image["anns"].append(([x, y, x + w, y + h], index_of[ann["category_id"]], segment or None))
    _refuse(path, problems)
    out = []
    for image in found.values():
        anns = image["anns"]
        out.append(
            DenseImage(
                file=image["file"],
                height=image["h"],
                width=image["w"],
                boxes=np.asarray([a[0] for a in anns], dtype=np.float32).reshape(-1, 4),
                labels=np.asarray([a[1] for a in anns], dtype=np.int64),
                segments=tuple(a[2] for a in anns),
            )
        )
    return DenseSplit(out, [categories[c] for c in order])


MASK_MODES = {"L", "P"}  # single-channel 8-bit: the value of a pixel is its class id


def read_masks(root: Path, split: str, classes: list[str], ignore: int, max_pixels: int) -> DenseSplit:
    """The images of `<root>/<split>/images/` with their masks in `<root>/<split>/masks/`: every image has a mask
    of its own size, single-channel, its values class ids (0 .. len(classes) - 1) or `ignore`."""
    image_dir, mask_dir = root / split / "images", root / split / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DenseRejected(f"{folder}: missing; a mask task needs <split>/images/ beside <split>/masks/.")
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.is_file() and p.name not in IGNORED}
    problems: list[str] = []
    out: list[DenseImage] = []
    allowed = np.zeros(256, dtype=bool)
    allowed[: len(classes)] = True
    allowed[ignore] = True
    for file in sorted(p for p in image_dir.iterdir() if p.name not in IGNORED):
        name = file.relative_to(root).as_posix()
        mask = masks.pop(file.stem, None)
        if mask is None:
            problems.append(f"{name}: no mask {split}/masks/{file.stem}.png")
            continue
        try:
            head = images.inspect(file, root, max_pixels)
            images.check_path(mask, root)
            with Image.open(mask) as opened:
                if opened.mode not in MASK_MODES:
                    problems.append(
                        f"{mask.relative_to(root)}: mode {opened.mode}, not one class id per pixel (L or P)"
                    )
                    continue
                if (opened.height, opened.width) != (head.height, head.width):
                    problems.append(
                        f"{mask.relative_to(root)}: {opened.width}x{opened.height}, its image is "
                        f"{head.width}x{head.height}"
                    )
                    continue
                values = np.unique(np.asarray(opened))
        except images.ImageRejected as exc:
            problems.append(f"{name}: {exc.reason}")
            continue
        except (OSError, ValueError, SyntaxError) as exc:
            problems.append(f"{mask.relative_to(root)}: cannot be read as a mask ({exc})")
            continue
        bad = values[~allowed[values]]
        if len(bad):
            problems.append(
                f"{mask.relative_to(root)}: class ids {bad.tolist()[:5]} out of range (0..{len(classes) - 1}, "
                f"ignore {ignore})"
            )
            continue
        empty = np.zeros((0, 4), dtype=np.float32)
        out.append(
            DenseImage(
                name, head.height, head.width, empty, np.zeros(0, np.int64), (), mask.relative_to(root).as_posix()
            )
        )
    problems += [f"{split}/masks/{m.name}: a mask without an image" for m in masks.values()]
    _refuse(root / split, problems)
    return DenseSplit(out, list(classes))


# The prepared store of a dense task (task_prepare writes it, the later task stages read it): per split the images
# as one uint8 (N, H, W, C) array, and the boxes (one Parquet table, a row per box) or the masks (N, H, W); beside
# them the manifest (a row per image, as the classification store's: split, file, size, pixel sha256 and stats).
SPEC, BOXES, MANIFEST = "dense.json", "boxes.parquet", "manifest.parquet"


def load_split(root: Path, labelled: DenseSplit, channels: int, max_pixels: int, ignore: int) -> DenseArrays:
    """A split's images decoded with the image rules (converted to `channels`) and its boxes or masks as arrays.
    Dense labels are in pixels of their image, so every image must already have one size: resizing scenes would
    move every box."""
    sizes = sorted({(i.height, i.width) for i in labelled.images})
    if len(sizes) != 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sizes[:5])
        raise DenseRejected(f"{root}: a dense task's images must share one size; found {len(sizes)} ({shown}).")
    pixels = np.stack([images.read(root / i.file, channels, max_pixels) for i in labelled.images])
    masks = None
    if labelled.images[0].mask is not None:
        masks = np.stack([np.asarray(Image.open(root / i.mask), dtype=np.uint8) for i in labelled.images])
    return DenseArrays(
        [i.file for i in labelled.images], pixels, [(i.boxes, i.labels) for i in labelled.images], masks, ignore
    )


@dataclass(frozen=True)
class DenseArrays:
    """One split of a dense task in memory: file names, images (N, H, W, C) uint8, per image its boxes (n, 4) x1 y1
    x2 y2 and labels, and for a mask task the masks (N, H, W) with the `ignore` value."""

    files: list[str]
    images: np.ndarray
    boxes: list[tuple[np.ndarray, np.ndarray]]
    masks: np.ndarray | None
    ignore: int

    def take(self, rows: np.ndarray) -> DenseArrays:
        """The images `rows` (positions in this split) with their labels."""
        return DenseArrays(
            [self.files[r] for r in rows],
            self.images[rows],
            [self.boxes[r] for r in rows],
            None if self.masks is None else self.masks[rows],
            self.ignore,
        )


def manifest(split: str, arrays: DenseArrays) -> pd.DataFrame:
    """A row per image: its split, file, size, pixel sha256 (duplicates and leakage), mean and std (blank images),
    its objects (boxes, or the classes other than the background, id 0, that its mask holds) and the sha256 of its
    labels, so that the manifest's digest changes when a box or a mask does."""
    import hashlib

    import pandas as pd

    def sha(*arrays: np.ndarray) -> str:
        digest = hashlib.sha256()
        for a in arrays:
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()

    flat = arrays.images.reshape(len(arrays.images), -1).astype(np.float32)
    if arrays.masks is None:
        objects = [len(b) for b, _ in arrays.boxes]
        labels = [sha(b.astype(np.float32), c.astype(np.int64)) for b, c in arrays.boxes]
    else:
        objects, labels = [], []
        for mask in arrays.masks:
            present = np.bincount(mask.ravel(), minlength=256).astype(bool)
            present[[0, arrays.ignore]] = False  # the background and unlabelled pixels are no object
            objects.append(int(present.sum()))
            labels.append(sha(mask))
    n, height, width, channels = arrays.images.shape
    return pd.DataFrame(
        {
            "split": split,
            "source": arrays.files,
            "sha256": [sha(img) for img in arrays.images],
            "height": height,
            "width": width,
            "channels": channels,
            "mean": flat.mean(1),
            "std": flat.std(1),
            "objects": objects,
            "labels_sha256": labels,
        },
        index=pd.RangeIndex(n),
    )


def box_table(split: str, arrays: DenseArrays) -> pd.DataFrame:
    """A row per box: its split, image (position in the split), corners, class and the image's size."""
    import pandas as pd

    rows = [
        (split, i, *map(float, box), int(label))
        for i, (boxes, labels) in enumerate(arrays.boxes)
        for box, label in zip(boxes, labels, strict=True)
    ]
    table = pd.DataFrame(rows, columns=["split", "image", "x1", "y1", "x2", "y2", "label"])
    table["image_height"], table["image_width"] = arrays.images.shape[1], arrays.images.shape[2]
    return table


def write_store(folder: Path, splits: dict[str, DenseArrays], spec: dict) -> pd.DataFrame:
    """Write a dense task's store into `folder` (a fresh folder: the stage writes it atomically); return its
    manifest."""
    import pandas as pd

    for split, arrays in splits.items():
        np.save(folder / f"images-{split}.npy", arrays.images)
        if arrays.masks is not None:
            np.save(folder / f"masks-{split}.npy", arrays.masks)
    if spec["kind"] == "detection":
        pd.concat([box_table(s, a) for s, a in splits.items()]).to_parquet(folder / BOXES, index=False)
    table = pd.concat([manifest(s, a) for s, a in splits.items()], ignore_index=True)
    table.to_parquet(folder / MANIFEST, index=False)
    (folder / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    return table


def open_store(folder: Path) -> tuple[dict, dict[str, DenseArrays]]:
    """(spec, split -> arrays) of a prepared dense store; arrays are memory-mapped, nothing is unpickled."""
    import pandas as pd

    if not (folder / SPEC).is_file():
        raise SslopsError(f"{folder}: no prepared dense store ({SPEC} missing); run the task_prepare stage.")
    spec = json.loads((folder / SPEC).read_text())
    table = pd.read_parquet(folder / MANIFEST)
    boxes = pd.read_parquet(folder / BOXES) if spec["kind"] == "detection" else None
    splits = {}
    for split in spec["splits"]:
        files = table.loc[table["split"] == split, "source"].tolist()
        pixels = np.load(folder / f"images-{split}.npy", mmap_mode="r", allow_pickle=False)
        masks = None
        per_image: list[tuple[np.ndarray, np.ndarray]] = [
            (np.zeros((0, 4), np.float32), np.zeros(0, np.int64)) for _ in files
        ]
        if boxes is not None:
            mine = boxes[boxes["split"] == split]
            for i, group in mine.groupby("image"):
                per_image[int(i)] = (  # copies: arrays from Parquet may be read-only
                    np.array(group[["x1", "y1", "x2", "y2"]], dtype=np.float32),
                    np.array(group["label"], dtype=np.int64),
                )
        else:
            masks = np.load(folder / f"masks-{split}.npy", mmap_mode="r", allow_pickle=False)
        splits[split] = DenseArrays(files, pixels, per_image, masks, spec["ignore"])
    return spec, splits
