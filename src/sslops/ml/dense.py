"""Dense transfer: an encoder as the backbone of an object detector and of a semantic segmentation head.

`DenseBackbone` exposes an encoder's convolutional trunk as two feature maps, a fine one (1/4 of the input side for
small_cnn and a ResNet with its standard stem) and the deepest one. On it:

- `detector`: torchvision's FCOS (Tian et al., 2019, "FCOS: Fully Convolutional One-Stage Object Detection") on
  the deepest map. Chosen for 2 CPU cores: one stage, anchor-free (one point per feature-map cell, no anchor boxes
  to tune), no region-of-interest pooling or second stage as in Faster R-CNN; with one feature level and a
  2-conv head of `width` = 128 channels, the detector's own layers count fewer multiply-adds than the default
  small_cnn under them (92 M against 107 M per 96 px scene, counted by forward hooks on its convolutions).
- `Segmenter`: a light decoder in the style of DeepLabV3+ (Chen et al., 2018) without its atrous pyramid: the deep
  map reduced and upsampled onto the fine one, fused by one 3x3 convolution, classified per pixel, upsampled to
  the input.

`fit_detector` / `fit_segmenter` train all of it (the backbone at `backbone_lr_scale` of the head's rate when
pretrained, as the classification transfer does); `box_map` scores boxes with COCO's mAP (torchmetrics on the
pycocotools backend) and `iou_scores` masks with per-class IoU and their mean.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslops.ml.device import FP32, Precision
from sslops.ml.models import Encoder, SmallCNN
from sslops.outputs.progress import progress_bar


class DenseBackbone(nn.Module):
    """An encoder's trunk returning (fine, deep) feature maps of raw-pixel (0..255) images; `channels` and
    `strides` say what each holds, measured once on a blank image."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.normalize, net = encoder.normalize, encoder.backbone
        if isinstance(net, SmallCNN):  # convs at strides 1, 2, 4, 8; its pooling is left out
            self.fine, self.deep = nn.Sequential(*net.features[:3]), net.features[3]
        else:  # a torchvision ResNet
            self.fine = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
            self.deep = nn.Sequential(net.layer2, net.layer3, net.layer4)
        side = 64
        was_training = self.training
        with torch.no_grad():
            fine, deep = self.eval()(torch.zeros(1, encoder.config.in_channels, side, side))
        self.train(was_training)
        self.channels = (fine.shape[1], deep.shape[1])
        self.strides = (side // fine.shape[-1], side // deep.shape[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fine = self.fine(self.normalize(x))
        return fine, self.deep(fine)


def _conv_bn(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Segmenter(nn.Module):
    """Per-pixel class logits (B, classes, H, W) of raw-pixel images (B, C, H, W)."""

    def __init__(self, backbone: DenseBackbone, classes: int, width: int = 64):
        super().__init__()
        self.backbone = backbone
        self.head = nn.ModuleDict(
            {
                "deep": _conv_bn(backbone.channels[1], width, 3),
                "fine": _conv_bn(backbone.channels[0], width, 1),
                "fuse": _conv_bn(2 * width, width, 3),
                "classify": nn.Conv2d(width, classes, 1),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine, deep = self.backbone(x)
        up = F.interpolate(self.head["deep"](deep), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head["classify"](self.head["fuse"](torch.cat([self.head["fine"](fine), up], 1)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _DeepMap(nn.Module):
    """The backbone's deepest map narrowed to `width` channels: what FCOS's head reads (`out_channels`)."""

    def __init__(self, backbone: DenseBackbone, width: int):
        super().__init__()
        self.backbone, self.out_channels = backbone, width
        self.reduce = _conv_bn(backbone.channels[1], width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.backbone(x)[1])


def detector(backbone: DenseBackbone, classes: int, size: tuple[int, int], width: int = 128) -> nn.Module:
    """FCOS over one feature level for images of `size` (height, width), never resized (torchvision's transform scales
    by min(min_size / shorter side, max_size / longer side), 1 here): class ids 1..classes (0: background),
    boxes x1, y1, x2, y2 in pixels. Inputs are float images in 0..1, as torchvision's detectors take them."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    stride = backbone.strides[1]
    channels = backbone.normalize.mean.shape[1]
    model = FCOS(
        _DeepMap(backbone, width),
        num_classes=classes + 1,
        min_size=min(size),
        max_size=max(size),
        image_mean=[0.0] * channels,
        image_std=[1 / 255] * channels,  # 0..1 back to the 0..255 the encoder normalises itself
        anchor_generator=AnchorGenerator(((stride,),), ((1.0,),)),
        head=FCOSHead(width, 1, classes + 1, num_convs=2),
        score_thresh=0.05,  # low, so that the precision-recall curve reaches high recall
        detections_per_img=50,
    )
    # The box distances pass a ReLU. torchvision starts them at 0, the ReLU's kink: features that push them below
    # it leave the regression without gradient for good (the rotation-pretrained encoder did: GIoU loss stuck at
    # 1.0 for 400 steps). Starting at one stride from each side (boxes 2 cells wide) keeps it alive.
    nn.init.constant_(model.head.regression_head.bbox_reg.bias, 1.0)
    return model


@dataclass(frozen=True)
class DenseRecipe:
    """How a dense model is fine-tuned: AdamW, cosine to 0 over `steps`, horizontal flips."""

    steps: int = 400
    batch_size: int = 16
    lr: float = 1.0e-3
    backbone_lr_scale: float = 1.0  # pretrained backbone's LR = lr x this (random init: lr)
    weight_decay: float = 1.0e-4
    flip_p: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class Fitting:
    """How one dense model is fine-tuned, besides its data: the recipe, whether its backbone is pretrained (its
    rate then scaled by `recipe.backbone_lr_scale`), and where and in what precision it computes."""

    recipe: DenseRecipe
    pretrained: bool
    device: torch.device
    precision: Precision = FP32
    progress: bool = False


def _fit(
    model: nn.Module,
    backbone: nn.Module,
    n: int,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    how: Fitting,
) -> dict[str, float]:
    """The loop both dense models share: `loss_of(rows, flip)` is a batch's loss (rows of the training set, and
    which of them to flip)."""
    recipe, device, precision = how.recipe, how.device, how.precision
    gen = torch.Generator().manual_seed(recipe.seed)
    own = {id(p) for p in backbone.parameters()}
    scale = recipe.backbone_lr_scale if how.pretrained else 1.0
    groups = [
        {"params": list(backbone.parameters()), "lr": recipe.lr * scale},
        {"params": [p for p in model.parameters() if id(p) not in own], "lr": recipe.lr},
    ]
    for group in groups:
        group["initial_lr"] = group["lr"]
    optimizer = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    model.to(device).train()
    started, losses = time.perf_counter(), []
    order = torch.randperm(n, generator=gen)
    at = 0
    with progress_bar(recipe.steps, "fine-tune", "step", enabled=how.progress, leave=False) as bar:
        for step in range(recipe.steps):
            if at + recipe.batch_size > n and at > 0:
                order, at = torch.randperm(n, generator=gen), 0
            rows = order[at : at + recipe.batch_size]
            at += recipe.batch_size
            flip = torch.rand(len(rows), generator=gen) < recipe.flip_p
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
            with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
                loss = loss_of(rows, flip)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.update()
    model.eval()
    return {"train_loss": float(np.mean(losses[-20:])), "steps": recipe.steps, "seconds": time.perf_counter() - started}


def _batch(images: np.ndarray, rows: torch.Tensor, flip: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(images[rows.numpy()]).permute(0, 3, 1, 2).float()
    x[flip] = x[flip].flip(-1)
    return x.to(device)


def fit_segmenter(
    model: Segmenter,
    images: np.ndarray,
    masks: np.ndarray,
    ignore: int,
    how: Fitting,
) -> dict[str, float]:
    """Train `model` on uint8 (N, H, W, C) `images` and their (N, H, W) class-id `masks` (`ignore` not counted)."""

    def loss_of(rows: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        target = torch.from_numpy(masks[rows.numpy()]).long()
        target[flip] = target[flip].flip(-1)
        logits = model(_batch(images, rows, flip, how.device)).float()
        return F.cross_entropy(logits, target.to(how.device), ignore_index=ignore)

    return _fit(model, model.backbone, len(images), loss_of, how)


Boxes = list[tuple[np.ndarray, np.ndarray]]  # per image: (n, 4) x1, y1, x2, y2 and (n,) 0-based labels


def fit_detector(
    model: nn.Module,
    images: np.ndarray,
    boxes: Boxes,
    how: Fitting,
) -> dict[str, float]:
    """Train a `detector` on uint8 (N, H, W, C) `images` and their boxes; an image without a box is background."""
    width = images.shape[2]

    def loss_of(rows: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        x = _batch(images, rows, flip, how.device) / 255
        targets = []
        for row, flipped in zip(rows.tolist(), flip.tolist(), strict=True):
            b = torch.as_tensor(boxes[row][0], dtype=torch.float32).reshape(-1, 4)
            if flipped:
                b = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1)
            targets.append({"boxes": b.to(how.device), "labels": torch.as_tensor(boxes[row][1] + 1).to(how.device)})
        parts = model(list(x), targets)
        return sum(parts.values())

    return _fit(model, model.backbone.backbone, len(images), loss_of, how)


@torch.no_grad()
def segment(model: Segmenter, images: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Predicted class ids (N, H, W) uint8 of uint8 (N, H, W, C) images."""
    model.to(device).eval()
    out = [
        model(torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).float().to(device)).argmax(1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.uint8)


@torch.no_grad()
def detect(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 64) -> list[dict]:
    """Per image: predicted `boxes` (n, 4), `scores` (n,) and 0-based `labels` (n,), as numpy arrays."""
    model.to(device).eval()
    found = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).float().to(device) / 255
        for d in model(list(x)):
            found.append(
                {
                    "boxes": d["boxes"].cpu().numpy(),
                    "scores": d["scores"].cpu().numpy(),
                    "labels": d["labels"].cpu().numpy() - 1,
                }
            )
    return found


def confusion(predicted: np.ndarray, truth: np.ndarray, classes: int, ignore: int) -> np.ndarray:
    """(classes, classes) pixel counts, rows the true class, columns the predicted one; `ignore` pixels left out."""
    keep = truth != ignore
    pairs = truth[keep].astype(np.int64) * classes + predicted[keep].astype(np.int64)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def object_pairs(predicted: np.ndarray, truth: np.ndarray, ignore: int) -> list[tuple[int, int]]:
    """(true class, predicted class) per object of (N, H, W) class-id masks: each class other than the background
    (id 0) present in a scene, and the class predicted on most of its pixels. A confusion table a person can read:
    one entry per object, not per pixel."""
    pairs = []
    for guess, true in zip(predicted, truth, strict=True):
        for label in np.unique(true):
            if label not in (0, ignore):
                pairs.append((int(label), int(np.bincount(guess[true == label]).argmax())))
    return pairs


def iou_scores(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class IoU (true positives over the union of true and predicted pixels; NaN for a class absent from both)
    and their mean over the classes present (mIoU)."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return iou, float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def box_map(predicted: list[dict], truth: Boxes) -> dict:
    """COCO mAP@[.5:.95] (`map`) and mAP@.5 (`map_50`) of predicted boxes against the true ones, by torchmetrics'
    MeanAveragePrecision on the pycocotools backend (COCO's own evaluation code), and the precision at COCO's 101
    recall points at IoU 0.5, averaged over the classes that have boxes (`precision_50`: the PR curve)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools", extended_summary=True)
    metric.update(
        [
            {
                "boxes": torch.as_tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.as_tensor(p["scores"], dtype=torch.float32),
                "labels": torch.as_tensor(p["labels"], dtype=torch.long),
            }
            for p in predicted
        ],
        [
            {
                "boxes": torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.as_tensor(labels, dtype=torch.long),
            }
            for b, labels in truth
        ],
    )
    scores = metric.compute()
    # precision: (IoU thresholds, 101 recall points, classes, areas, max detections); -1 where a class has no box
    at_50 = scores["precision"][0, :, :, 0, -1].numpy()
    present = (at_50 >= 0).all(0)
    curve = at_50[:, present].mean(1) if present.any() else np.zeros(len(at_50))
    return {"map": float(scores["map"]), "map_50": float(scores["map_50"]), "precision_50": curve}


def box_confusion(
    predicted: list[dict], truth: Boxes, classes: int, iou: float = 0.5, score_min: float = 0.3
) -> np.ndarray:
    """(classes + 1, classes + 1) counts of a detector's class mistakes; the last row and column are "background".
    Each true box pairs with the highest-scoring prediction (scores >= `score_min`) that overlaps it by IoU >= `iou`
    and is not yet paired: its class is the column, none is a miss (background column); a prediction left unpaired is
    a false alarm (background row)."""
    from torchvision.ops import box_iou

    matrix = np.zeros((classes + 1, classes + 1), dtype=np.int64)
    for found, (boxes, labels) in zip(predicted, truth, strict=True):
        keep = found["scores"] >= score_min
        p_boxes, p_labels = found["boxes"][keep], found["labels"][keep]
        order = np.argsort(-found["scores"][keep], kind="stable")
        overlap = box_iou(torch.as_tensor(boxes).reshape(-1, 4), torch.as_tensor(p_boxes).reshape(-1, 4)).numpy()
        used = np.zeros(len(p_boxes), dtype=bool)
        for t, label in enumerate(labels):
            pick = next((j for j in order if not used[j] and overlap[t, j] >= iou), None)
            if pick is None:
                matrix[label, classes] += 1
            else:
                used[pick] = True
                matrix[label, p_labels[pick]] += 1
        for j in np.flatnonzero(~used):
            matrix[classes, p_labels[j]] += 1
    return matrix


@torch.no_grad()
def object_features(
    encoder: Encoder, images: np.ndarray, regions: list[list[np.ndarray]], device: torch.device
) -> np.ndarray:
    """One vector per object: the encoder's deepest feature map averaged over the object's region, a boolean (H, W)
    mask per object of each image (a box filled, or one class's pixels). What the embedding map shows of a dense
    task: how the encoder separates the objects of a scene before any fine-tuning."""
    backbone = DenseBackbone(encoder).to(device).eval()
    out = []
    for image, masks in zip(images, regions, strict=True):
        if not masks:
            continue
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().to(device)
        deep = backbone(x)[1][0].float().cpu()  # (C, h, w)
        weights = F.adaptive_avg_pool2d(torch.from_numpy(np.stack(masks)).float()[:, None], deep.shape[-2:])[:, 0]
        weights = weights / weights.sum((1, 2), keepdim=True).clamp_min(1e-6)
        out.append(torch.einsum("nhw,chw->nc", weights, deep).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
