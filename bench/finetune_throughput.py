"""Fine-tuning throughput (images/s) of the real loop (`transfer.finetune`) in each precision and memory layout.

The finetune stage trains 14 models per task of the default run, most of them 1,000 steps at batch 64: on a CPU
this loop is most of a `make run`. This measures what `finetune.amp` and `finetune.channels_last` buy: fp32 or
bf16 autocast, contiguous or channels_last, each a fresh model of the default backbone on random 28x28 images,
in interleaved rounds (best of each, since the machines are shared), at the recipes' batch sizes.

Run: .venv/bin/python bench/finetune_throughput.py [--steps 200] [--rounds 3] [--json OUT.json]
bf16 rows are skipped on a CPU without bf16 units (emulated bf16 is slower than fp32 there, and `auto` avoids it).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sslops.config import Project
from sslops.ml.calibrate import finetune_step
from sslops.ml.device import Precision, cpu_has_native_bf16, cpu_model
from sslops.ml.models import BackboneConfig, Encoder, resolve_backbone

SETTINGS = {  # name: (autocast dtype, memory format)
    "fp32 contiguous": (None, torch.contiguous_format),
    "fp32 channels_last": (None, torch.channels_last),
    "bf16 contiguous": (torch.bfloat16, torch.contiguous_format),
    "bf16 channels_last": (torch.bfloat16, torch.channels_last),
}


def rate(backbone: BackboneConfig, batch: int, steps: int, precision: Precision) -> float:
    """Images/s of fine-tuning a fresh model (`calibrate.finetune_step`: the median of three runs of `steps` steps,
    after an untimed one)."""
    torch.manual_seed(0)
    encoder = Encoder(backbone, [0.29], [0.35])
    return batch / finetune_step(encoder, (1, 28, 28), batch, precision, torch.device("cpu"), steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    knobs = Project.discover().config("pretrain").backbone
    backbone = resolve_backbone(knobs.to_core(BackboneConfig, in_channels=1), 28)
    settings = {k: v for k, v in SETTINGS.items() if v[0] is None or cpu_has_native_bf16()}
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for batch in args.batch:
            for name, (dtype, layout) in settings.items():
                key = f"batch {batch}, {name}"
                best[key] = max(best.get(key, 0.0), rate(backbone, batch, args.steps, Precision(dtype, layout)))
                print(f"{key}: {best[key]:,.0f} images/s", flush=True)
    record = {
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "backbone": backbone.name,
        "steps": args.steps,
        "rounds": args.rounds,
        "date": time.strftime("%F"),
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
    }
    print(json.dumps(record, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
