"""Dispatch from `prepare.format` in params.yaml to the reader for that raw format."""

from __future__ import annotations

from pathlib import Path

from sslops.data.cifar import plan_cifar10
from sslops.data.idx import plan_idx
from sslops.data.imagefolder import plan_imagefolder
from sslops.data.sources import Plan
from sslops.errors import SslopsError

FORMATS = ("idx", "imagefolder", "cifar10")


def plan_dataset(
    fmt: str,
    root: Path,
    classes: list[str],
    channels: int | None,
    unlabeled_dir: str | None,
    max_pixels: int,
    workers: int = 1,
) -> Plan:
    """Plan reading the raw dataset at `root` (a folder of files: its headers read by up to `workers` processes);
    raises SslopsError naming the problem on bad input."""
    if fmt not in FORMATS:
        raise SslopsError(
            f"Unknown dataset format '{fmt}' in params.yaml (prepare.format); supported: {', '.join(FORMATS)}."
        )
    if not root.is_dir():
        raise SslopsError(f"{root}: data folder does not exist (prepare.root in params.yaml).")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise SslopsError(f"{root}: data folder is empty; put the dataset there (see README: 'Your own images').")
    if fmt == "idx":
        return plan_idx(root, classes)
    if fmt == "cifar10":
        return plan_cifar10(root, classes)
    return plan_imagefolder(root, classes, channels, unlabeled_dir, max_pixels, workers=workers)
