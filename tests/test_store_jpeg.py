"""The JPEG image store: what it keeps (source bytes where they already are the image, else re-encoded), what it
records, what reads it back (Pillow here, torchvision in pretraining's loader: the same pixels), and its refusals."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import augment_config
from sslops.data import decode as decode_module
from sslops.data import encoded
from sslops.data.encoded import Codec, EncodedImages
from sslops.data.formats import plan_dataset
from sslops.data.images import ImageRejected
from sslops.data.store import MANIFEST, ImageStore, write_store
from sslops.errors import SslopsError
from sslops.ml.augment import BatchAugment
from sslops.ml.views import JpegStream, on_the_fly_pairs

SIDE = 64


def _smooth(n: int, seed: int = 0) -> np.ndarray:
    """Photo-like RGB images (8x8 random colours upsampled): JPEG keeps them close, unlike pixel noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((SIDE, SIDE), Image.Resampling.BICUBIC)) for s in small])


def _folder(root: Path, per_class: int = 4) -> dict[str, int]:
    """An ImageFolder of 64 px images of every kind the store treats apart; how many of each were written."""
    images = _smooth(6 * per_class + 4)
    labels = np.arange(len(images)) % 2
    kinds = {"rgb_jpeg": 0, "png": 0, "gray_jpeg": 0, "rotated_jpeg": 0}
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        split = "train" if i < 4 * per_class else "test"
        folder = root / split / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        kind = list(kinds)[i % 4]
        img = Image.fromarray(pixels)
        if kind == "png":
            img.save(folder / f"{i}.png")
        elif kind == "gray_jpeg":
            img.convert("L").save(folder / f"{i}.jpg", quality=85)
        elif kind == "rotated_jpeg":
            exif = Image.Exif()
            exif[0x0112] = 3  # upside down: the pixels to store are not the file's
            img.save(folder / f"{i}.jpg", quality=85, exif=exif)
        else:
            img.save(folder / f"{i}.jpg", quality=85)
        kinds[kind] += 1
    return kinds


def _plan(root: Path):
    return plan_dataset("imagefolder", root, [], None, "unlabeled", 10**6)


def test_auto_keeps_small_images_raw_and_photos_as_jpeg() -> None:
    assert encoded.choose("auto", 90, (28, 28, 1)).format == "raw"
    assert encoded.choose("auto", 90, (63, 64, 3)).format == "raw"
    assert encoded.choose("auto", 75, (64, 64, 3)) == Codec("jpeg", 75)
    assert encoded.choose("jpeg", 90, (28, 28, 1)).format == "jpeg"
    assert encoded.choose("raw", 90, (224, 224, 3)).format == "raw"


def test_the_store_keeps_jpeg_bytes_that_already_are_the_image_and_reencodes_the_rest(tmp_path: Path) -> None:
    kinds = _folder(tmp_path / "raw")
    plan = _plan(tmp_path / "raw")
    out = tmp_path / "store"
    out.mkdir()
    write_store(plan, out, progress=False, codec=Codec("jpeg", 90))
    manifest = ImageStore.open(out).manifest
    spec = json.loads((out / encoded.SPEC).read_text())
    assert spec["format"] == "jpeg" and spec["quality"] == 90 and spec["shape"] == [SIDE, SIDE, 3]
    assert spec["source_bytes_kept"] == kinds["rgb_jpeg"]  # not the gray, the rotated or the PNG ones
    store = ImageStore.open(out)
    assert store.encoded and store.images.shape == (len(manifest), SIDE, SIDE, 3)
    kept = [p for p in plan.parts if p.file is not None]
    for part in kept:
        row = plan.parts.index(part)
        assert bytes(store.images.blob(row)) == Path(part.file).read_bytes()
    # Every row decodes to the pixels the manifest describes: validation checks what training reads.
    pixels = store.images[np.arange(len(manifest))]
    digests = [hashlib.sha256(img.tobytes()).hexdigest() for img in pixels]
    assert digests == manifest["sha256"].tolist()
    assert np.allclose(pixels.reshape(len(pixels), -1).mean(1), manifest["mean"].to_numpy(), atol=1e-3)
    # Re-encoded images are close to the source pixels (lossy, at the recorded quality), rotated ones turned.
    rotated = next(i for i, p in enumerate(plan.parts) if int(Path(p.source).stem) % 4 == 3)
    assert plan.parts[rotated].file is None
    source = plan.parts[rotated].load()[0].astype(float)  # the reader turns it upright
    assert np.abs(store.images[rotated].astype(float) - source).mean() < 3
    assert np.abs(store.images[rotated].astype(float) - source[::-1, ::-1]).mean() > 10


def test_the_jpeg_store_is_the_same_whatever_the_number_of_processes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(decode_module, "IMAGES_PER_WORKER", 8)
    _folder(tmp_path / "raw")
    plan = _plan(tmp_path / "raw")
    stores = []
    for workers in (1, 2):
        out = tmp_path / f"store-{workers}"
        out.mkdir()
        write_store(plan, out, progress=False, workers=workers, codec=Codec("jpeg", 90))
        stores.append(out)
    for name in (encoded.INDEX, encoded.SPEC, MANIFEST, f"{encoded.SHARDS}/00000.bin"):
        assert (stores[0] / name).read_bytes() == (stores[1] / name).read_bytes(), name


def test_shards_split_the_rows_and_reads_cross_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(encoded, "SHARD_IMAGES", 5)
    _folder(tmp_path / "raw")
    plan = _plan(tmp_path / "raw")
    out = tmp_path / "store"
    out.mkdir()
    write_store(plan, out, progress=False, codec=Codec("jpeg", 90))
    assert len(list((out / encoded.SHARDS).iterdir())) == -(-plan.total // 5)
    images = EncodedImages(out)
    kept = [(row, p.file) for row, p in enumerate(plan.parts) if p.file is not None]
    assert kept and all(bytes(images.blob(row)) == Path(file).read_bytes() for row, file in kept)  # where it was put
    rows = np.array([0, 4, 5, 11, plan.total - 1])
    assert np.array_equal(images[rows], np.stack([images[int(r)] for r in rows]))
    view = ImageStore.open(out).take(rows)
    assert len(view) == 5 and np.array_equal(view[1:3], images[rows[1:3]]) and np.array(view).shape[0] == 5


def test_a_jpeg_that_fails_to_decode_is_named_and_no_store_is_left(tmp_path: Path) -> None:
    from sslops.outputs.atomic import atomic_dir

    _folder(tmp_path / "raw")
    plan = _plan(tmp_path / "raw")
    bad = next(Path(p.file) for p in plan.parts if p.file is not None)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # truncated after planning: the header still reads
    target = tmp_path / "prepared"
    with pytest.raises(ImageRejected, match=str(bad)), atomic_dir(target) as tmp:
        write_store(plan, tmp, progress=False, codec=Codec("jpeg", 90))
    assert not target.exists()


def test_a_damaged_store_is_refused_by_name(tmp_path: Path) -> None:
    _folder(tmp_path / "raw")
    out = tmp_path / "store"
    out.mkdir()
    write_store(_plan(tmp_path / "raw"), out, progress=False, codec=Codec("jpeg", 90))
    np.save(out / encoded.INDEX, np.load(out / encoded.INDEX)[:-1])
    with pytest.raises(SslopsError, match="index.npy"):
        ImageStore.open(out)
    with pytest.raises(SslopsError, match="decodes to"):
        encoded.decode(_jpeg(np.zeros((8, 8, 3), np.uint8)), (SIDE, SIDE, 3))


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_pairs_equal_the_on_the_fly_pairs_of_the_decoded_images(tmp_path: Path, workers: int) -> None:
    """torchvision decodes in the loader, Pillow in the store: the same libjpeg-turbo, the same pixels, so a JPEG
    store trains on exactly what validation hashed, with or without worker processes."""
    _folder(tmp_path / "raw")
    out = tmp_path / "store"
    out.mkdir()
    write_store(_plan(tmp_path / "raw"), out, progress=False, codec=Codec("jpeg", 90))
    images = EncodedImages(out)
    rows = np.arange(1, len(images), 2)
    augment = BatchAugment(augment_config())
    cpu = torch.device("cpu")
    stream = JpegStream(images, rows, augment, 4, seed=3, device=cpu, workers=workers)
    for epoch in (0, 1):
        streamed = list(stream.pairs(epoch))
        expected = list(on_the_fly_pairs(images[rows], augment, 4, epoch, 3, device=cpu))
        assert len(streamed) == len(expected) == len(rows) // 4
        for (a1, a2), (b1, b2) in zip(streamed, expected, strict=True):
            assert torch.equal(a1, b1) and torch.equal(a2, b2)


def _photos(root: Path, per_class: int = 8) -> None:
    """Photos as a user brings them: JPEG and PNG, 200 to 300 px on a side, landscape and portrait, in 4 classes
    (train and test) and a flat unlabeled/ folder."""
    rng = np.random.default_rng(1)
    for split, count in (("train", per_class), ("test", per_class // 2), ("unlabeled", 2)):
        for k in range(4 * count):
            height, width = (int(v) for v in rng.integers(200, 301, size=2))
            small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
            folder = root / split if split == "unlabeled" else root / split / f"class{k % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            if k % 3:
                img.save(folder / f"{k}.jpg", quality=90)
            else:
                img.save(folder / f"{k}.png")


@pytest.mark.integration
def test_photos_at_224_px_go_through_the_stages_on_jpeg_stores(project) -> None:
    """A folder of mixed-size JPEG and PNG photos at `resize.side: 224`: `store: auto` keeps both stores (the
    pretraining one and the task's) as JPEG, recorded in metrics and MLflow; no view cache; pretraining fed by a
    loader process that decodes, its monitor reading the store batch by batch."""
    from conftest import CLASSES, TINY_BACKBONE, mlflow_runs, run_task, set_param
    from sslops.cli import main

    _photos(project.root / "data" / "photos")
    classes = CLASSES  # class0..class3, as the folder's
    set_param(project.root, "prepare", "format", "imagefolder")
    set_param(project.root, "prepare", "root", "data/photos")
    set_param(project.root, "prepare", "classes", classes)
    set_param(project.root, "prepare", "resize", {"side": 224, "mode": "crop"})
    task = {
        "kind": "classification",
        "format": "imagefolder",
        "root": "data/photos",
        "classes": classes,
        "budgets": [1.0],
    }
    set_param(project.root, "tasks", "photos", task)
    set_param(project.root, "pretrain", "backbone", {**TINY_BACKBONE, "name": "small_cnn"})
    set_param(project.root, "pretrain", "images", 32)
    set_param(project.root, "pretrain", "decode_workers", 1)
    for stage in ("prepare", "validate", "augment", "pretrain"):
        assert main([stage]) == 0, stage
    run_task("photos", stages=("prepare",))
    prepared = json.loads((project.metrics_dir / "prepare.json").read_text())
    assert prepared["store"] == "jpeg" and prepared["shape"] == [224, 224, 3] and prepared["store_bytes"] > 0
    assert prepared["store_bytes"] < 0.25 * prepared["images"] * 224 * 224 * 3  # raw would be 147 KiB an image
    assert ImageStore.open(project.prepared_dir).encoded and ImageStore.open(project.outputs("photos").prepared).encoded
    augment = json.loads((project.metrics_dir / "augment.json").read_text())
    assert augment["views"] == 0 and "kept as JPEG" in augment["cache_plan"]
    pretrained = json.loads((project.metrics_dir / "pretrain.json").read_text())
    assert pretrained["steps"] == 2 and 0 <= pretrained["knn_acc"] <= 1
    run = next(r for r in mlflow_runs(project.root) if r.info.run_name == "prepare")
    assert run.data.params["prepare.store.codec"] == "jpeg" and run.data.params["prepare.store.format"] == "auto"
