"""What DINO's multi-crop costs per step: images/s of training steps with 0 and with N local crops per image.

  python bench/dino_multicrop.py                    # 0 and 4 local crops, the params.yaml backbone and DINO knobs
  python bench/dino_multicrop.py --crops 0 2 4 --steps 20 --batch 256

Each step is what the training loop does (forward of both global views and the local crops, backward, SGD step,
teacher EMA) on random 28x28 grayscale views, in fp32 on the CPU with torch's default threads; images/s counts
each image of the batch once, as the pretrain stage's `images_per_s` does. Two warm-up steps are not timed.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from sslops.ml.methods import DINOConfig, build_method
from sslops.ml.models import BackboneConfig, Encoder

ROOT = Path(__file__).resolve().parents[1]


def images_per_s(crops: int, steps: int, batch: int, side: int) -> float:
    pretrain = yaml.safe_load((ROOT / "params.yaml").read_text())["pretrain"]
    backbone = {k: v for k, v in pretrain["backbone"].items() if k != "name"}
    torch.manual_seed(0)
    encoder = Encoder(BackboneConfig(name="small_cnn", in_channels=1, **backbone), [0.3], [0.35])
    method = build_method(replace(DINOConfig(**pretrain["dino"]), local_crops=crops), encoder, (1, side, side))
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    views = [torch.randint(0, 256, (batch, 1, side, side)).float() for _ in range(2)]
    for step in range(steps + 2):
        if step == 2:
            started = time.perf_counter()
        loss = method(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(step, steps + 2)
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--side", type=int, default=28)
    args = parser.parse_args()
    for crops in args.crops:
        rate = images_per_s(crops, args.steps, args.batch, args.side)
        print(f"local_crops {crops}: {rate:.0f} images/s ({args.batch / rate:.3f} s per step of {args.batch})")


if __name__ == "__main__":
    main()
