"""What each backbone costs by image size: the numbers behind `pretrain.backbone.name: auto` (models.resolve_backbone).

For each image side and backbone (params.yaml's `small_cnn`; ResNet-18 with the standard stem, 7x7 stride-2 conv and
max-pool; ResNet-18 with the small-image stem), the SimCLR model step alone on ready random tensors through the real
loop (`sslops.ml.train.pretrain`): images/s (1 image = 2 views, forward + backward + LARS) and forward GFLOPs per
view. The AMP setting is params.yaml's (`auto`: bf16 on a CPU with native bf16, else fp32). What `auto` picks is
marked in the table.

Run: .venv/bin/python bench/backbones.py [--sides 28,32,64,96,224] [--batch 64] [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import replace

import torch
from pretrain_throughput import default_params, make_method, measure, step_flops

from sslops.config.validation import method_knobs
from sslops.ml.device import amp_name, cpu_has_native_bf16
from sslops.ml.methods import METHOD_CONFIGS
from sslops.ml.models import BackboneConfig, resolve_backbone


def candidates(base: BackboneConfig, side: int) -> dict[str, BackboneConfig]:
    """The backbones compared at one side; the key of the one `auto` resolves to is starred."""
    options = {
        "small_cnn": replace(base, name="small_cnn"),
        "resnet18 (standard stem)": replace(base, name="resnet18", small_stem=False),
    }
    if side <= 64:  # the small stem keeps full resolution through ResNet-18: minutes per step beyond this
        options["resnet18 (small stem)"] = replace(base, name="resnet18", small_stem=True)
    picked = resolve_backbone(replace(base, name="auto"), side)
    return {f"{k} *" if v == picked else k: v for k, v in options.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="28,32,64,96,224", help="image sides in px (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (after 3 warm-up steps)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    params, _ = default_params()
    device = torch.device("cpu")
    amp = amp_name(params.amp, device)
    head = method_knobs(params, METHOD_CONFIGS, "simclr")
    base = params.backbone.to_core(BackboneConfig, in_channels=args.channels)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, amp {amp}")
    print(f"native bf16: {cpu_has_native_bf16()}; batch {args.batch}, {args.steps} timed steps, SimCLR head {head}")
    rows = []
    for side in (int(s) for s in args.sides.split(",")):
        shape = (side, side, args.channels)
        for name, backbone in candidates(base, side).items():
            method = make_method(shape, backbone, head)
            gflops = step_flops(method, 1, shape) / 3 / 2 / 1e9  # forward, per view

            def batches(epoch: int, shape=shape):
                x = torch.randint(0, 256, (args.batch, shape[2], shape[0], shape[1]), dtype=torch.uint8)
                while True:
                    yield x, x

            ips = measure(name, batches, args.steps, args.batch, shape, backbone, head, True, device, amp)
            rows.append({"side": side, "backbone": name, "images_per_s": round(ips, 1), "gflops_per_view": gflops})
    print("\n| side | backbone (* = what `auto` picks) | images/s | forward GFLOP per view |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['side']} px | {row['backbone']} | {row['images_per_s']:,.0f} | {row['gflops_per_view']:.3f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"amp": amp, "batch": args.batch, "steps": args.steps, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
