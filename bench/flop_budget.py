"""The default run's training FLOPs, and the fewest seconds a CPU needs for them at a measured FLOP rate.

  .venv/bin/python bench/flop_budget.py bench/results/pretrain_throughput_cpu_zen3_fp32.json [...] [--json OUT]

FLOPs per image (torch.utils.flop_counter, x3 for forward and backward): a pretraining step of params.yaml's method
(both views, its head) and a fine-tuning step (one view, a linear head) on params.yaml's CPU encoder at the
prepared images' size. Image passes: pretraining's from metrics/pretrain.json (steps x pretrain.batch_size);
fine-tuning's from the last finished finetune run of each task in this project's MLflow store (each fine-tuning
child run's steps x its recipe's batch size). For each throughput file (bench/pretrain_throughput.py's JSON, from the
machine it names), the seconds at its model step's achieved FLOP rate and at its matmul peak: no code change makes
those training steps faster than the peak, so what a run must fit under a time budget on that machine is its FLOPs.
Features, probes, kNN and evaluation come on top.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mlflow
import torch
from torch.utils.flop_counter import FlopCounterMode

from sslops.config import Project
from sslops.data.store import ImageStore
from sslops.ml.transfer import Classifier
from sslops.stages.pretrain import build_method_for

ROOT = Path(__file__).resolve().parents[1]


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return 3.0 * counter.get_total_flops()


def per_image(project: Project) -> tuple[float, float]:
    """FLOPs of one image's pretraining step (two views) and of one image's fine-tuning step (one view)."""
    pretrain, augment = project.config("pretrain"), project.config("augment")
    h, w, c = ImageStore.open(project.prepared_dir).images.shape[1:]
    method = build_method_for((h, w, c), [0.3] * c, [0.35] * c, pretrain, augment)
    x = torch.zeros(8, c, h, w)
    classifier = Classifier(method.encoder, 10)
    return flops(lambda: method([x, x])) / 8, flops(lambda: classifier(x)) / 8


def finetune_passes(project: Project) -> dict[str, int]:
    """Task -> images passed through fine-tuning by its last finished finetune run (steps x batch, every model)."""
    client = mlflow.MlflowClient(f"sqlite:///{project.root / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(project.config("tracking").experiment)
    out = {}
    for task in project.config("tasks").names():
        last = f"attributes.run_name = 'finetune/{task}' and attributes.status = 'FINISHED'"
        parent = client.search_runs([experiment.experiment_id], last, order_by=["attributes.start_time DESC"])[0]
        children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        out[task] = sum(
            int(r.data.metrics.get("steps", 0)) * int(r.data.params["recipe_batch_size"])
            for r in children
            if r.data.params.get("protocol") == "finetune"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rates", nargs="*", type=Path, help="bench/pretrain_throughput.py JSON files")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    project = Project(ROOT)
    pretrain_flops, finetune_flops = per_image(project)
    pretrained = json.loads((project.metrics_dir / "pretrain.json").read_text())
    images = {"pretrain": pretrained["steps"] * project.config("pretrain").batch_size, **finetune_passes(project)}
    total = images["pretrain"] * pretrain_flops + sum(n for t, n in images.items() if t != "pretrain") * finetune_flops
    per = f"pretraining {pretrain_flops / 1e6:.1f} M (two views), fine-tuning {finetune_flops / 1e6:.1f} M"
    print(f"FLOPs per image: {per}")
    print("image passes: " + ", ".join(f"{k} {v:,}" for k, v in images.items()))
    print(f"training FLOPs of the default run: {total / 1e12:.1f} T")
    machines = []
    for path in args.rates:
        rate = json.loads(path.read_text())
        achieved = rate["a_model_only_channels_last_gflops"] * 1e9
        peak = rate["matmul_peak_gflops"] * 1e9
        row = {"file": path.name, "achieved_gflops": round(achieved / 1e9, 1), "peak_gflops": round(peak / 1e9, 1)}
        row |= {"seconds_at_achieved": round(total / achieved), "seconds_at_peak": round(total / peak)}
        machines.append(row)
        print(
            f"{path.name}: {row['seconds_at_achieved']:,} s at the model step's {row['achieved_gflops']} GFLOP/s, "
            f"{row['seconds_at_peak']:,} s at the {row['peak_gflops']} GFLOP/s matmul peak"
        )
    if args.json:
        record = {"flops_per_image": {"pretrain": pretrain_flops, "finetune": finetune_flops}, "images": images}
        args.json.write_text(json.dumps(record | {"total_flops": total, "machines": machines}, indent=2) + "\n")


if __name__ == "__main__":
    main()
