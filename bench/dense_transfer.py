"""Does pretraining help boxes and masks? The registered encoder against random init on the default dense task.

The task: data/fashion-scenes (`sslops fetch-data`, `sslops.data.scenes`): 2,000 train and 500 test scenes of 96 px,
Fashion-MNIST items on textured backgrounds, read by the pipeline's readers (COCO JSON for boxes, the mask folder
for masks). For each label budget (a fraction of the train scenes, nested: a seeded order per draw, the first
`fraction` of it) and each init (the project's champion encoder from its MLflow registry, its files checked against
their sha256s; the same architecture at random init), it fine-tunes

  detection     FCOS on the encoder (`sslops.ml.dense.detector`): COCO mAP@[.5:.95] and mAP@.5 on the test scenes
  segmentation  the light decoder (`sslops.ml.dense.Segmenter`): mIoU over background and the 10 classes

with the same recipe for both inits (`DenseRecipe`: AdamW, cosine, flips; `--steps` steps of 16 scenes), and prints
one table row per (budget, init) with the mean and spread over draws, plus the seconds each model took. With
`--pictures DIR`: four test scenes with their true and predicted boxes and masks at the largest budget
(dense_examples.png) and the precision-recall curves at IoU 0.5 of every detector (dense_pr.png).

Run (the project's pipeline must have registered an encoder: `make run` or `dvc repro register`):
  .venv/bin/python bench/dense_transfer.py --threads 1 --draws 3 --json bench/results/dense_transfer_cpu_zen4.json \
      --pictures docs/img
  .venv/bin/python bench/dense_transfer.py --budgets 0.05 --steps 100 --kinds segmentation   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sslops.adapters import tracking  # noqa: E402
from sslops.config import Project  # noqa: E402
from sslops.data import dense as readers  # noqa: E402
from sslops.ml import dense  # noqa: E402
from sslops.ml.device import Precision, machine  # noqa: E402
from sslops.ml.models import load_encoder_dir  # noqa: E402
from sslops.outputs import plots  # noqa: E402

IGNORE = 255
MAX_PIXELS = Project(ROOT).config("prepare").max_pixels  # the pipeline's limit on an image before it is decoded
SHOWN = 4  # test scenes in the examples picture


def load(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list, list[str]]:
    """A split's images (N, H, W, 1), semantic masks (N, H, W), boxes and class names, through the readers."""
    coco = readers.read_coco(root, split, MAX_PIXELS)
    masks = {
        m.file: m.mask
        for m in readers.read_masks(root, split, ["background", *coco.classes], IGNORE, MAX_PIXELS).images
    }
    images = np.stack([np.asarray(Image.open(root / i.file))[..., None] for i in coco.images])
    semantic = np.stack([np.asarray(Image.open(root / masks[i.file])) for i in coco.images])
    return images, semantic, [(i.boxes, i.labels) for i in coco.images], coco.classes


def champion() -> torch.nn.Module:
    project = Project(ROOT)
    tracking.connect(project)
    with tracking.registered_encoder(project.model_name, "champion") as (folder, _, digests):
        encoder, _ = load_encoder_dir(folder, *digests)
    return encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data/fashion-scenes")
    parser.add_argument("--budgets", default="0.01,0.1,1.0", help="fractions of the train scenes")
    parser.add_argument("--draws", type=int, default=1, help="label draws per budget below 100 %%")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--kinds", default="detection,segmentation")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--amp", default="auto", help="auto | bf16 | off, as finetune.amp")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--pictures", type=Path, help="folder for dense_examples.png and dense_pr.png")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    precision = Precision.resolve(args.amp, "auto", device)
    train_images, train_masks, train_boxes, classes = load(args.data, "train")
    test_images, test_masks, test_boxes, _ = load(args.data, "test")
    pretrained = champion()
    recipe = dense.DenseRecipe(steps=args.steps)
    rows, shown, curves = [], {}, {}
    for budget in (float(b) for b in args.budgets.split(",")):
        for draw in range(1 if budget == 1 else args.draws):
            order = np.random.default_rng(draw).permutation(len(train_images))
            picked = np.sort(order[: max(1, round(budget * len(order)))])
            for init in ("pretrained", "scratch"):
                for kind in args.kinds.split(","):
                    torch.manual_seed(draw)
                    start = pretrained.untrained_copy() if init == "scratch" else _copy(pretrained)
                    backbone = dense.DenseBackbone(start)
                    how = dense.Fitting(recipe, init == "pretrained", device, precision, progress=True)
                    began = time.perf_counter()
                    if kind == "detection":
                        model = dense.detector(backbone, len(classes), size=train_images.shape[1:3])
                        dense.fit_detector(model, train_images[picked], [train_boxes[i] for i in picked], how)
                        found = dense.detect(model, test_images, device)
                        score = dense.box_map(found, test_boxes)
                        curves[f"{init}, {len(picked)} scenes"] = score.pop("precision_50")
                    else:
                        model = dense.Segmenter(backbone, len(classes) + 1)
                        dense.fit_segmenter(model, train_images[picked], train_masks[picked], IGNORE, how)
                        predicted = dense.segment(model, test_images, device)
                        matrix = dense.confusion(predicted, test_masks, len(classes) + 1, IGNORE)
                        score = {"miou": dense.iou_scores(matrix)[1]}
                        found = [{"mask": m} for m in predicted]
                    if draw == 0:  # the last budget's models are the ones pictured
                        shown[f"{init}: {'boxes' if kind == 'detection' else 'masks'}"] = found[:SHOWN]
                    row = {
                        "kind": kind,
                        "budget": budget,
                        "scenes": len(picked),
                        "draw": draw,
                        "init": init,
                        **score,
                        "seconds": round(time.perf_counter() - began, 1),
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print(table(rows))
    if args.pictures:
        truth = [
            {"boxes": b, "labels": labels, "mask": m} for (b, labels), m in zip(test_boxes, test_masks, strict=True)
        ]
        panels = [("truth", truth[:SHOWN]), *sorted(shown.items())]
        plots.dense_examples(test_images[:SHOWN], panels, classes, args.pictures / "dense_examples.png")
        plots.precision_recall(curves, args.pictures / "dense_pr.png", "Detection on the test scenes (IoU 0.5)")
    if args.json:
        meta = {
            "machine": machine(device),
            "amp": precision.amp,
            "threads": torch.get_num_threads(),
            "steps": args.steps,
            "batch_size": recipe.batch_size,
            "test_scenes": len(test_images),
        }
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")


def _copy(encoder: torch.nn.Module) -> torch.nn.Module:
    clone = encoder.untrained_copy()
    clone.load_state_dict(encoder.state_dict())
    return clone


def table(rows: list[dict]) -> str:
    """Markdown: per (kind, budget, init), the mean ± spread over draws of each metric, and seconds per model."""
    lines = ["| task | labelled scenes | init | metric | score | seconds per model |", "|---|---|---|---|---|---|"]
    keys = sorted({(r["kind"], r["budget"], r["scenes"], r["init"]) for r in rows}, key=lambda k: (k[0], k[1], k[3]))
    for kind, budget, scenes, init in keys:
        group = [r for r in rows if (r["kind"], r["budget"], r["init"]) == (kind, budget, init)]
        for metric in ("map", "map_50") if kind == "detection" else ("miou",):
            values = [100 * r[metric] for r in group]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            seconds = statistics.fmean(r["seconds"] for r in group)
            lines.append(
                f"| {kind} | {scenes} ({budget:.0%}) | {init} | {metric} | {statistics.fmean(values):.2f}{spread} "
                f"| {seconds:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
