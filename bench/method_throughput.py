"""Training images/s of every pretext method on this machine, measured side by side in one process.

  python bench/method_throughput.py [--steps 30] [--methods simclr,dino] [--json bench/results/method_throughput.json]

Each method is built as the pretrain stage builds it (params.yaml's backbone, method knobs, optimiser and `amp`)
and trained by the same loop (`sslops.ml.train.pretrain`) on the augmentation cache (artifacts/augment, run
`dvc repro augment` first): one epoch of `--steps` steps to warm up, then a second one that is timed. Methods run one
after another in interleaved rounds (`--rounds`), the best round kept, so a burst of load on the shared machine
hurts one round, not one method. `bench/compare_methods.py --equal-time` scales `pretrain.images` by these rates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sslops.config import Project
from sslops.data.store import ImageStore
from sslops.ml.device import amp_name, cpu_model, pick_device
from sslops.ml.methods import METHODS
from sslops.ml.train import TrainConfig, pretrain
from sslops.ml.views import INDEX, ViewCache, cached_pairs
from sslops.stages.pretrain import _build_method

ROOT = Path(__file__).resolve().parents[1]


def measure(project: Project, method_name: str, steps: int) -> float:
    """Images/s (one image = its two views, as the pretrain stage counts) of one timed epoch of `steps` steps."""
    cfg = project.config("pretrain").model_copy(update={"method": method_name})
    augment = project.config("augment")
    cache_dir = project.root / "artifacts" / "augment"
    rows = np.asarray(json.loads((cache_dir / INDEX).read_text())["rows"], dtype=np.int64)
    store = ImageStore.open(project.prepared_dir)
    method = _build_method(store, rows, cfg, augment)
    cache = ViewCache.open(cache_dir)
    train = cfg.to_core(TrainConfig, epochs=2, warmup_epochs=0.5)

    def batches(epoch: int):  # noqa: ANN202 - an iterator of view pairs
        return itertools.islice(cached_pairs(cache, cfg.batch_size, epoch, cfg.seed), steps)

    device = pick_device(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        history = pretrain(method, batches, steps, train, device, Path(tmp) / "ckpt.pt", method_name, progress=False)
    return history[-1].images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "method_throughput.json")
    args = parser.parse_args()
    project = Project(ROOT)
    names = args.methods.split(",")
    best: dict[str, float] = {}
    started = time.perf_counter()
    for round_ in range(args.rounds):
        for name in names:
            rate = measure(project, name, args.steps)
            best[name] = max(best.get(name, 0.0), rate)
            print(f"round {round_ + 1}: {name:<9} {rate:7.0f} images/s", flush=True)
    cfg = project.config("pretrain")
    record = {
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "steps": args.steps,
        "rounds": args.rounds,
        "batch_size": cfg.batch_size,
        "amp": amp_name(cfg.amp, pick_device(cfg.device)),
        "cpu": cpu_model(),
        "date": time.strftime("%F"),
        "seconds": round(time.perf_counter() - started),
    }
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
