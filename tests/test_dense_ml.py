"""Dense transfer in the ML core: backbones' feature maps, the detector and segmenter learning, their metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import backbone_config
from sslops.ml import dense
from sslops.ml.models import Encoder


def _encoder(name: str = "small_cnn", channels: int = 1) -> Encoder:
    torch.manual_seed(0)
    return Encoder(
        backbone_config(name=name, in_channels=channels, width=8, stem_width=8), [0.5] * channels, [0.25] * channels
    )


@pytest.mark.parametrize(("name", "strides"), [("small_cnn", (4, 8)), ("resnet18", (1, 8))])
def test_the_backbone_gives_a_fine_and_a_deep_map(name: str, strides: tuple[int, int]):
    backbone = dense.DenseBackbone(_encoder(name))
    assert backbone.strides == strides and backbone.training
    fine, deep = backbone(torch.zeros(2, 1, 32, 32))
    assert fine.shape[1:] == (backbone.channels[0], 32 // strides[0], 32 // strides[0])
    assert deep.shape[1:] == (backbone.channels[1], 32 // strides[1], 32 // strides[1])


def _squares(n: int, side: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """Noisy scenes with one bright square of class 0 or a dark-framed one of class 1; masks 1 + class."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, (n, side, side, 1)).astype(np.uint8)
    masks = np.zeros((n, side, side), dtype=np.uint8)
    boxes = []
    for i in range(n):
        size, label = int(rng.integers(8, 14)), i % 2
        y, x = (int(v) for v in rng.integers(0, side - size, 2))
        images[i, y : y + size, x : x + size] = 230
        if label:
            images[i, y + 2 : y + size - 2, x + 2 : x + size - 2] = 140
        masks[i, y : y + size, x : x + size] = 1 + label
        boxes.append((np.array([[x, y, x + size, y + size]], dtype=np.float32), np.array([label])))
    return images, masks, boxes


def test_the_segmenter_learns_beyond_its_random_init():
    images, masks, _ = _squares(48)
    test_images, test_masks, _ = _squares(32, seed=1)
    model = dense.Segmenter(dense.DenseBackbone(_encoder()), classes=3, width=16)
    untrained = dense.iou_scores(dense.confusion(dense.segment(model, test_images, "cpu"), test_masks, 3, 255))[1]
    recipe = dense.DenseRecipe(steps=45, batch_size=8, lr=3e-3)
    dense.fit_segmenter(model, images, masks, 255, dense.Fitting(recipe, pretrained=False, device=torch.device("cpu")))
    learned = dense.iou_scores(dense.confusion(dense.segment(model, test_images, "cpu"), test_masks, 3, 255))[1]
    assert learned > untrained + 0.3 and learned > 0.6


def test_the_detector_learns_beyond_its_random_init():
    images, _, boxes = _squares(48)
    test_images, _, test_boxes = _squares(32, seed=1)
    model = dense.detector(dense.DenseBackbone(_encoder()), classes=2, size=(32, 32), width=32)
    untrained = dense.box_map(dense.detect(model, test_images, "cpu"), test_boxes)["map_50"]
    recipe = dense.DenseRecipe(steps=90, batch_size=8, lr=3e-3)
    dense.fit_detector(model, images, boxes, dense.Fitting(recipe, pretrained=False, device=torch.device("cpu")))
    learned = dense.box_map(dense.detect(model, test_images, "cpu"), test_boxes)["map_50"]
    assert learned > untrained + 0.3


def test_iou_against_hand_counted_pixels():
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
    predicted = np.array([[0, 1, 1, 1], [0, 2, 0, 1]])
    matrix = dense.confusion(predicted, truth, 3, ignore=255)
    assert matrix.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]  # the ignored pixel is not counted
    iou, mean = dense.iou_scores(matrix)
    # class 0: 2 / (3 + 3 - 2); class 1: 2 / (2 + 3 - 2); class 2: 1 / (2 + 1 - 1)
    assert iou.tolist() == pytest.approx([0.5, 2 / 3, 0.5]) and mean == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    absent = dense.iou_scores(dense.confusion(np.zeros((2, 2)), np.zeros((2, 2)), 3, 255))
    assert absent[1] == 1.0 and np.isnan(absent[0][1:]).all()  # a class in neither is left out of the mean


def test_box_map_against_hand_computed_values():
    truth = [(np.array([[0, 0, 10, 10]]), np.array([0]))]
    exact = [{"boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([0])}]
    scores = dense.box_map(exact, truth)
    assert (scores["map"], scores["map_50"]) == pytest.approx((1.0, 1.0)) and scores["precision_50"] == pytest.approx(
        [1.0] * 101
    )
    # IoU 72 / 100: a hit at the thresholds 0.50 to 0.70 of COCO's ten (0.50, 0.55, ..., 0.95), a miss above
    shifted = [{"boxes": np.array([[0, 0, 7.2, 10]]), "scores": np.array([0.9]), "labels": np.array([0])}]
    scores = dense.box_map(shifted, truth)
    assert (scores["map"], scores["map_50"]) == pytest.approx((0.5, 1.0))
    # two boxes of one class, the better-scored prediction a miss: recall reaches 0.5 at precision 1/2, no further
    truth = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 0]))]
    found = {"boxes": np.array([[50, 50, 60, 60], [0, 0, 10, 10]]), "scores": np.array([0.9, 0.8]), "labels": [0, 0]}
    curve = dense.box_map([found], truth)["precision_50"]
    assert curve.tolist() == pytest.approx([0.5] * 51 + [0.0] * 50)
    wrong_class = [{"boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([1])}]
    assert dense.box_map(wrong_class, truth)["map"] == 0.0


def test_the_detector_starts_with_boxes_that_can_learn():
    """torchvision starts FCOS's box distances at the ReLU's kink; features that push them below it (a pretrained
    encoder did) would leave the regression without gradient. Every distance starts positive, whatever the map."""
    model = dense.detector(dense.DenseBackbone(_encoder()), classes=2, size=(32, 32), width=32)
    for features in (torch.zeros(1, 32, 4, 4), -torch.ones(1, 32, 4, 4)):
        distances, _ = model.head.regression_head([features])
        assert (distances > 0).all()


def test_the_pictures_draw_boxes_masks_and_curves(tmp_path):
    from PIL import Image

    from sslops.outputs import plots

    images = np.zeros((2, 16, 16, 1), dtype=np.uint8)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[2:8, 2:8] = 1
    truth = [{"boxes": np.array([[2, 2, 8, 8]]), "labels": np.array([0]), "mask": mask}] * 2
    found = [{"boxes": np.array([[1, 1, 9, 9], [0, 0, 4, 4]]), "labels": [0, 1], "scores": np.array([0.9, 0.1])}] * 2
    plots.dense_examples(images, [("truth", truth), ("pretrained: boxes", found)], ["a", "b"], tmp_path / "ex.png")
    with Image.open(tmp_path / "ex.png") as picture:  # a drawn picture, not a blank canvas
        assert len(np.unique(np.asarray(picture.convert("L")))) > 3
    curves = {"pretrained, 2 scenes": np.linspace(1, 0, 101), "scratch, 2 scenes": np.zeros(101)}
    plots.precision_recall(curves, tmp_path / "pr.png", "test")
    assert Image.open(tmp_path / "pr.png").size[0] > 100
