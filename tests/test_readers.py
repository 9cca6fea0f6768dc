"""The raw-format readers: happy paths and every bad input the issue names, each a clear SslopsError."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, synthetic_images, write_cifar, write_idx_dataset, write_imagefolder
from sslops.data import formats, resize
from sslops.data.idx import read_idx, write_idx
from sslops.errors import SslopsError

MAX_PIXELS = 25_000_000  # prepare.max_pixels for these tests: far above every test image


def plan_dataset(fmt: str, root: Path, classes: list[str], channels: int | None = None):
    """`sslops.data.formats.plan_dataset` with prepare's other knobs at test values: channels as found (unless
    given), the `unlabeled/` pool folder, a pixel cap no test image reaches."""
    return formats.plan_dataset(fmt, root, classes, channels, "unlabeled", MAX_PIXELS)


def load_all(plan):
    return np.concatenate([p.load() for p in plan.parts])


def test_idx_round_trip_raw_and_gzip(tmp_path: Path):
    images, _ = synthetic_images(5, 7)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, images[..., 0])
        assert np.array_equal(read_idx(tmp_path / name), images[..., 0])


def test_idx_plan_reads_both_splits_with_labels(tmp_path: Path):
    write_idx_dataset(tmp_path, n_train=40, n_test=8)
    plan = plan_dataset("idx", tmp_path, CLASSES)
    assert [(p.split, p.count, p.shape) for p in plan.parts] == [("train", 40, (12, 12, 1)), ("test", 8, (12, 12, 1))]
    assert plan.classes == CLASSES
    assert load_all(plan).shape == (48, 12, 12, 1)


def test_idx_wrong_magic_names_file(tmp_path: Path):
    write_idx_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[2] = 0x0D  # float instead of ubyte
    path.write_bytes(bytes(raw))
    with pytest.raises(SslopsError, match=r"train-images-idx3-ubyte: wrong IDX magic number"):
        plan_dataset("idx", tmp_path, CLASSES)


def test_idx_truncated_file(tmp_path: Path):
    write_idx_dataset(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-50])
    plan = plan_dataset("idx", tmp_path, CLASSES)  # the header is intact: found when pixels load
    message = (
        r"t10k-images-idx3-ubyte: header declares shape \(20, 12, 12\) \(2880 bytes of data\), more than a file "
        r"of 2846 bytes can hold: the file is truncated, corrupt or not an IDX file"
    )  # a raw file is checked against its size before it is read
    with pytest.raises(SslopsError, match=message):
        load_all(plan)


def test_idx_truncated_gzip_content(tmp_path: Path):
    write_idx_dataset(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    raw = path.read_bytes()
    path.unlink()
    path.with_suffix(".gz").write_bytes(gzip.compress(raw[:-50]))  # a valid gzip of too few pixels
    plan = plan_dataset("idx", tmp_path, CLASSES)
    with pytest.raises(SslopsError, match=r"t10k-images-idx3-ubyte.gz: truncated or corrupt IDX file"):
        load_all(plan)


def test_idx_corrupt_gzip(tmp_path: Path):
    write_idx_dataset(tmp_path)
    raw = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    compressed = gzip.compress(raw)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(SslopsError, match=r"train-labels-idx1-ubyte\.gz: (cannot be|truncated|file is empty)"):
        plan_dataset("idx", tmp_path, CLASSES)


def test_idx_label_file_shorter_than_images(tmp_path: Path):
    write_idx_dataset(tmp_path, n_train=40)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(39, np.uint8))
    with pytest.raises(SslopsError, match=r"holds 39 labels but .*train-images-idx3-ubyte holds 40 images"):
        plan_dataset("idx", tmp_path, CLASSES)


def test_idx_missing_file(tmp_path: Path):
    write_idx_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(SslopsError, match=r"no test labels file found"):
        plan_dataset("idx", tmp_path, CLASSES)


def test_imagefolder_with_unlabeled_pool(tmp_path: Path):
    write_imagefolder(tmp_path, per_class=2, unlabeled=3)
    plan = plan_dataset("imagefolder", tmp_path, [])
    splits = [p.split for p in plan.parts]
    assert splits.count("train") == 8 and splits.count("test") == 8 and splits.count("unlabeled") == 3
    assert plan.classes == CLASSES
    assert all(p.labels is None for p in plan.parts if p.split == "unlabeled")
    assert load_all(plan).shape == (19, 10, 10, 3)


def test_imagefolder_declared_class_order_wins(tmp_path: Path):
    write_imagefolder(tmp_path, per_class=1)
    plan = plan_dataset("imagefolder", tmp_path, ["class3", "class0"])
    assert plan.classes == ["class3", "class0", "class1", "class2"]
    first = next(p for p in plan.parts if p.source.startswith("train/class3/"))
    assert first.labels.tolist() == [0]


def test_imagefolder_channels_conversion(tmp_path: Path):
    write_imagefolder(tmp_path, per_class=1, rgb=True)
    plan = plan_dataset("imagefolder", tmp_path, [], channels=1)
    assert load_all(plan).shape[-1] == 1


def test_imagefolder_of_mixed_sizes_is_resized_to_the_median_side_and_says_so(tmp_path: Path):
    """Issue 13: a folder of mixed sizes used to be refused; now `resize.side: null` picks the median shorter side."""
    write_imagefolder(tmp_path)  # 10x10 images
    for k, (h, w) in enumerate(((30, 20), (12, 40), (40, 40))):
        Image.fromarray(np.full((h, w, 3), 100 + k, np.uint8)).save(tmp_path / "train" / "class2" / f"odd{k}.png")
    plan = plan_dataset("imagefolder", tmp_path, [])
    assert {p.shape for p in plan.parts} == {(10, 10, 3), (30, 20, 3), (12, 40, 3), (40, 40, 3)}
    fitted, record = resize.fit_plan(plan, resize.target(plan, None, "crop"))
    assert record == {"resized": 3, "height": 10, "width": 10, "channels": 3, "mode": "crop"}  # median of 10s
    assert load_all(fitted).shape == (plan.total, 10, 10, 3)
    assert "3 of 29 images (10x10, 12x40, 30x20, 40x40) resized to 10x10x3 (crop)" in fitted.notes[-1]
    assert {p.source_size for p in fitted.parts if p.source_size} == {(30, 20), (12, 40), (40, 40)}
    write_idx_dataset(tmp_path / "idx")
    one_size = plan_dataset("idx", tmp_path / "idx", [])
    assert resize.target(one_size, None, "crop") is None  # one shared size: nothing to do
    assert resize.fit_plan(one_size, None) == (one_size, {"resized": 0})


def test_resize_crop_keeps_the_centre_and_pad_keeps_everything():
    """crop: shorter side to N, centre square; pad: longer side to N, black borders; colour converted by rule."""
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, :5] = 255  # a white band at the left edge
    wide[:, 8:12] = (0, 0, 255)  # a blue band in the centre
    crop = resize.fit_image(wide, resize.Fit(10, 10, 3, "crop"))
    assert crop.shape == (10, 10, 3) and crop[:, 0].max() < 50 and crop[5, 5, 2] > 200  # the edge band is cut off
    pad = resize.fit_image(wide, resize.Fit(10, 10, 3, "pad"))
    assert pad[:2].max() == 0 and pad[-2:].max() == 0  # black bars above and below
    assert pad[5, 0].min() > 200  # the white band survives, at half size
    gray = resize.fit_image(wide, resize.Fit(4, 4, 1, "crop"))
    assert gray.shape == (4, 4, 1)
    rgb = resize.fit_image(np.full((8, 8, 1), 77, np.uint8), resize.Fit(16, 16, 3, "crop"))  # upsampled, replicated
    assert rgb.shape == (16, 16, 3) and (rgb == 77).all()


def test_imagefolder_empty_class_folder(tmp_path: Path):
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(SslopsError, match=r"train/empty: class folder is empty"):
        plan_dataset("imagefolder", tmp_path, [])


def test_imagefolder_non_image_file(tmp_path: Path):
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "class1" / "notes.txt").write_text("hello")
    with pytest.raises(SslopsError, match=r"notes.txt: not an image file"):
        plan_dataset("imagefolder", tmp_path, [])


def test_imagefolder_corrupt_png_header(tmp_path: Path):
    write_imagefolder(tmp_path)
    (tmp_path / "test" / "class0" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(SslopsError, match=r"0.png: cannot be read as an image"):
        plan_dataset("imagefolder", tmp_path, [])


def test_imagefolder_truncated_png_pixels(tmp_path: Path):
    write_imagefolder(tmp_path, size=64)
    path = tmp_path / "train" / "class0" / "0.png"
    path.write_bytes(path.read_bytes()[:-200])  # header intact, pixel data cut
    plan = plan_dataset("imagefolder", tmp_path, [])
    with pytest.raises(SslopsError, match=r"0.png: corrupt or truncated image"):
        load_all(plan)


def test_cifar10_batches(tmp_path: Path):
    write_cifar(tmp_path, per_batch=6)
    plan = plan_dataset("cifar10", tmp_path, [])
    assert sum(p.count for p in plan.parts if p.split == "train") == 30
    assert plan.classes[:2] == ["c0", "c1"]
    assert load_all(plan).shape == (36, 32, 32, 3)


def test_cifar10_missing_batch(tmp_path: Path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(SslopsError, match=r"data_batch_3: missing CIFAR-10 batch"):
        plan_dataset("cifar10", tmp_path, [])


def test_empty_data_folder(tmp_path: Path):
    with pytest.raises(SslopsError, match=r"data folder is empty"):
        plan_dataset("idx", tmp_path, CLASSES)


def test_unknown_format(tmp_path: Path):
    write_idx_dataset(tmp_path)
    with pytest.raises(SslopsError, match=r"Unknown dataset format 'tfrecord'.*supported: idx, imagefolder, cifar10"):
        plan_dataset("tfrecord", tmp_path, CLASSES)


def test_imagefolder_lists_every_file_it_cannot_use_before_reading_pixels(tmp_path: Path):
    """prepare names every bad file at once (each with its reason), not the first of them: one fix, one rerun."""
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "class0" / "blank.png").touch()
    (tmp_path / "train" / "class1" / "notes.txt").write_text("hello")
    (tmp_path / "test" / "class0" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "train" / "stray.png").write_bytes(b"")
    with pytest.raises(SslopsError) as err:
        plan_dataset("imagefolder", tmp_path, [])
    text = str(err.value)
    assert text.startswith(f"{tmp_path}: 4 file(s) cannot be used; fix or remove them:")
    for expected in (
        "blank.png: empty (0 bytes)",
        "notes.txt: not an image file",
        "0.png: cannot be read as an image",
        "stray.png: a file directly under train/",
    ):
        assert expected in text
