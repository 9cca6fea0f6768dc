"""The default dense task's scenes and the dense readers (COCO JSON, mask folders) on real-format files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from conftest import scene_items
from sslops.data import dense, scenes
from sslops.errors import SslopsError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"train": 12, "test": 6}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("scenes")
    scenes.generate(base / "scenes", scene_items(base / "fashion"), SMALL)
    return base / "scenes"


def test_png_writer_round_trips_through_pillow_across_deflate_blocks(tmp_path: Path):
    pixels = np.random.default_rng(0).integers(0, 256, (300, 301), dtype=np.uint8)  # > 65,535 bytes: 2 blocks
    path = tmp_path / "x.png"
    path.write_bytes(scenes.png(pixels))
    assert np.array_equal(np.asarray(Image.open(path)), pixels)


def test_scenes_are_the_same_bytes_every_time(small: Path, tmp_path: Path):
    scenes.generate(tmp_path / "again", small.parent / "fashion", SMALL)
    assert (tmp_path / "again" / scenes.SUMS).read_bytes() == (small / scenes.SUMS).read_bytes()
    for line in (small / scenes.SUMS).read_text().splitlines():
        sha, name = line.split("  ")
        assert hashlib.sha256((small / name).read_bytes()).hexdigest() == sha


def test_train_scenes_hold_train_items_only_and_masks_match_the_annotations(small: Path):
    for split, ink in (("train", 200), ("test", 100)):
        coco = json.loads((small / split / "annotations.json").read_text())
        assert len(coco["images"]) == SMALL[split] and coco["annotations"]
        for image in coco["images"]:
            pixels = np.asarray(Image.open(small / split / "images" / image["file_name"]))
            semantic = np.asarray(Image.open(small / split / "masks" / image["file_name"]))
            union = np.zeros_like(semantic)
            for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
                rle = coco_mask.frPyObjects(ann["segmentation"], 96, 96)
                visible = coco_mask.decode(rle).astype(bool)
                assert ann["area"] == visible.sum() and ann["bbox"] == [int(v) for v in coco_mask.toBbox(rle)]
                assert (pixels[visible] == ink).all()  # a test scene shows test items only, and vice versa
                union[visible] = ann["category_id"]
            assert np.array_equal(union, semantic)


def test_an_item_keeps_at_least_half_of_itself(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(scenes, "SCALES", (30, 30))  # one size, so every item's own area is known
    items = np.zeros((10, 28, 28), dtype=np.uint8)
    items[:, 2:26, 2:26] = 255
    full = int((scenes._scaled(items[0], 30) >= scenes.INK).sum())
    covered = 0
    for key in range(60):
        scene = scenes.compose(key, items, np.arange(10))
        assert 1 <= len(scene.instances) <= scenes.MAX_ITEMS
        for _, visible in scene.instances:
            assert visible.sum() >= scenes.MIN_VISIBLE * full
            covered += visible.sum() < full
    assert covered  # some items are partly covered: the rule was exercised


@pytest.mark.skipif(not (ROOT / "data/fashion-mnist/train-images-idx3-ubyte").is_file(), reason="make data")
def test_the_default_scenes_match_their_recorded_digest(tmp_path: Path):
    result = scenes.generate(tmp_path / "scenes", ROOT / "data/fashion-mnist")
    assert result["verified"] and result["digest"] == scenes.DIGEST
    assert scenes.generate(tmp_path / "scenes", ROOT / "data/fashion-mnist")["verified"]  # left as it is


def test_generating_from_other_items_than_recorded_is_refused_and_writes_nothing(tmp_path: Path):
    fashion = scene_items(tmp_path / "fashion")
    with pytest.raises(SslopsError, match="not the recorded"):
        scenes.generate(tmp_path / "scenes", fashion)
    assert not (tmp_path / "scenes").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["fashion"]


def test_readers_read_the_scenes(small: Path):
    coco = dense.read_coco(small, "train", 10**6)
    assert coco.classes == scenes.CLASSES and len(coco.images) == SMALL["train"]
    first = coco.images[0]
    assert first.boxes.shape[1] == 4 and (first.boxes[:, 2:] > first.boxes[:, :2]).all()
    masks = dense.read_masks(small, "test", ["background", *scenes.CLASSES], 255, 10**6)
    assert [m.file for m in masks.images] == [f"test/images/{i:06d}.png" for i in range(SMALL["test"])]
    assert masks.images[0].mask == "test/masks/000000.png"


def _coco(tmp_path: Path, **change) -> Path:
    """A two-image COCO split; `change` replaces top-level lists."""
    folder = tmp_path / "task" / "train" / "images"
    folder.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(folder / name)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5]},
            {
                "id": 11,
                "image_id": 2,
                "category_id": 3,
                "bbox": [0, 0, 30, 20],
                "segmentation": [[0, 0, 29, 0, 29, 19]],
            },
        ],
    }
    data.update(change)
    (tmp_path / "task" / "train" / "annotations.json").write_text(json.dumps(data))
    return tmp_path / "task"


def test_coco_boxes_become_corners_and_categories_dense_indices(tmp_path: Path):
    split = dense.read_coco(_coco(tmp_path), "train", 10**6)
    assert split.classes == ["cat", "dog"]
    assert split.images[0].boxes.tolist() == [[1, 2, 11, 7]] and split.images[0].labels.tolist() == [1]
    assert split.images[1].labels.tolist() == [0] and split.images[1].segments[0] == [[0, 0, 29, 0, 29, 19]]


BAD_ANNOTATIONS = {
    "a box outside the image": (
        {"bbox": [25, 2, 10, 5]},
        r"annotation 10 \(train/images/a.png\): bbox .* leaves the 30x20",
    ),
    "a degenerate box": ({"bbox": [1, 2, 0, 5]}, "annotation 10 .*degenerate"),
    "a category not declared": ({"category_id": 4}, "annotation 10 .*category_id 4 is not declared"),
    "an image that is missing": ({"image_id": 9}, "annotation 10: image_id 9 is not in images"),
    "a mask of the wrong size": ({"segmentation": {"size": [10, 10], "counts": [100]}}, "RLE mask is \\[10, 10\\]"),
    "a polygon outside": ({"segmentation": [[0, 0, 40, 0, 40, 10]]}, "polygon leaves the 30x20 image"),
    "a bbox of text": ({"bbox": "1,2,3,4"}, "bbox must be four finite numbers"),
}


@pytest.mark.parametrize("case", BAD_ANNOTATIONS)
def test_each_bad_annotation_is_named_by_file_and_record(tmp_path: Path, case: str):
    change, message = BAD_ANNOTATIONS[case]
    good = {"id": 10, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5]}
    with pytest.raises(dense.DenseRejected, match=message):
        dense.read_coco(_coco(tmp_path, annotations=[good | change]), "train", 10**6)


def test_every_problem_is_listed_at_once(tmp_path: Path):
    anns = [{"id": k, "image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1]} for k in range(25)]
    with pytest.raises(dense.DenseRejected, match="(?s)25 problem.*and 5 more"):
        dense.read_coco(_coco(tmp_path, annotations=anns), "train", 10**6)


def test_malformed_json_and_wrong_files_are_named(tmp_path: Path):
    root = _coco(tmp_path)
    (root / "train" / "annotations.json").write_text('{"images": [')
    with pytest.raises(dense.DenseRejected, match="annotations.json: not valid JSON"):
        dense.read_coco(root, "train", 10**6)
    (root / "train" / "annotations.json").write_text("[]")
    with pytest.raises(dense.DenseRejected, match="not COCO JSON"):
        dense.read_coco(root, "train", 10**6)
    images = [
        {"id": 1, "file_name": "gone.png"},
        {"id": 2, "file_name": "../a.png"},
        {"id": 3, "file_name": "a.png", "height": 5, "width": 5},
    ]
    with pytest.raises(dense.DenseRejected) as err:
        dense.read_coco(_coco(tmp_path / "x", images=images, annotations=[]), "train", 10**6)
    assert "images[0] (gone.png): cannot be followed" in str(err.value)
    assert "images[1] (../a.png): file_name must be a path inside" in str(err.value)
    assert "images[2] (a.png): declared 5x5, the file is 30x20" in str(err.value)


def test_a_link_out_of_the_data_folder_is_refused(tmp_path: Path):
    root = _coco(tmp_path)
    outside = tmp_path / "outside.png"
    shutil.copy(root / "train/images/a.png", outside)
    (root / "train/images/a.png").unlink()
    (root / "train/images/a.png").symlink_to(outside)
    with pytest.raises(dense.DenseRejected, match="a symbolic link to .*outside the data folder"):
        dense.read_coco(root, "train", 10**6)


def _mask_task(tmp_path: Path) -> Path:
    for sub in ("images", "masks"):
        (tmp_path / "seg" / "train" / sub).mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 9), dtype=np.uint8)).save(tmp_path / f"seg/train/images/{name}.png")
        Image.fromarray(np.full((8, 9), 1, dtype=np.uint8)).save(tmp_path / f"seg/train/masks/{name}.png")
    return tmp_path / "seg"


def test_mask_folders_pair_by_name_and_check_size_mode_and_class_ids(tmp_path: Path):
    root = _mask_task(tmp_path)
    split = dense.read_masks(root, "train", ["bg", "thing"], 255, 10**6)
    assert [(i.file, i.mask) for i in split.images] == [
        ("train/images/a.png", "train/masks/a.png"),
        ("train/images/b.png", "train/masks/b.png"),
    ]
    masks = root / "train" / "masks"
    Image.fromarray(np.full((4, 9), 1, dtype=np.uint8)).save(masks / "a.png")
    Image.fromarray(np.array([[0, 1, 2, 255]], dtype=np.uint8).repeat(8, 0).repeat(3, 1)[:, :9]).save(masks / "b.png")
    Image.fromarray(np.zeros((8, 9, 3), dtype=np.uint8)).save(masks / "c.png")
    with pytest.raises(dense.DenseRejected) as err:
        dense.read_masks(root, "train", ["bg", "thing"], 255, 10**6)
    text = str(err.value)
    assert "train/masks/a.png: 9x4, its image is 9x8" in text
    assert "train/masks/b.png: class ids [2] out of range (0..1, ignore 255)" in text
    assert "train/masks/c.png: a mask without an image" in text
    (masks / "b.png").unlink()
    with pytest.raises(dense.DenseRejected, match="train/images/b.png: no mask train/masks/b.png"):
        dense.read_masks(root, "train", ["bg", "thing"], 255, 10**6)


def test_an_rgb_mask_is_refused(tmp_path: Path):
    root = _mask_task(tmp_path)
    Image.fromarray(np.zeros((8, 9, 3), dtype=np.uint8)).save(root / "train/masks/a.png")
    with pytest.raises(dense.DenseRejected, match="mode RGB, not one class id per pixel"):
        dense.read_masks(root, "train", ["bg", "thing"], 255, 10**6)
