"""The prepare stage's memory does not hold the pixels: its peak RSS on 1,000 and on 10,000 photos (64 px RGB JPEG
files, 12 KiB each decoded) grows by the manifest's and the plan's bytes per image (about 2 KiB, measured in
docs/benchmarks.md), not by the images'. The stage runs as a `python -m sslops` process with one decoding process,
so the peak is its own. A raw store written through a memory map failed this (every page written stayed resident
in the writer, 12 KiB per image), which is why it is written with pwrite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, small_params

# The stage's own peak: VmHWM, since ru_maxrss reports at least the parent's size at fork (pytest's, here).
PEAK = "import re, sys; from sslops.cli import main; code = main(sys.argv[1:]); "
PEAK += "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
PEAK += "print('peak_rss_kb', hwm); sys.exit(code)"


def _photos(root: Path, n: int) -> None:
    """`n` 64 px RGB JPEGs in two classes of train/ and a few in test/ (smooth content, as photos compress)."""
    rng = np.random.default_rng(n)
    small = rng.integers(0, 256, (64, 4, 4, 3), dtype=np.uint8)  # 64 distinct images, each used many times
    tiles = [Image.fromarray(s).resize((64, 64), Image.Resampling.BICUBIC) for s in small]
    for i in range(n):
        split = "test" if i % 10 == 0 else "train"
        folder = root / split / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        # Four 8x8 blocks spell i in base 16, in steps JPEG keeps: no two files decode alike (validation counts).
        pixels = np.asarray(tiles[i % 64]).copy()
        for b in range(4):
            pixels[:8, 8 * b : 8 * b + 8] = (i >> (4 * b)) % 16 * 16
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)


def _project(root: Path, n: int, store: str) -> Path:
    root.mkdir(parents=True)
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load(small_params((REPO / "params.yaml").read_text()))
    params["prepare"].update(
        format="imagefolder", root="data/photos", classes=[], channels="auto", workers=1,
        store={"format": store, "quality": 90},
    )  # fmt: skip
    params["validate"].update(min_rows=10, max_rows=10**6, max_duplicate_share=0.0)
    params["augment"]["views"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _photos(root / "data" / "photos", n)
    return root


def _peak_mb(root: Path, stage: str) -> float:
    env = {"SSLOPS_ROOT": str(root), "PATH": str(Path(sys.executable).parent), "HOME": str(root)}
    env |= {"GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [sys.executable, "-c", PEAK, stage], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.split("peak_rss_kb")[-1].split()[0]) / 1024


@pytest.mark.slow
def test_the_pixels_of_the_store_do_not_stay_in_the_prepare_stage_memory(tmp_path: Path) -> None:
    peaks = {n: _peak_mb(_project(tmp_path / f"n{n}", n, "raw"), "prepare") for n in (1_000, 10_000)}
    per_image_kib = (peaks[10_000] - peaks[1_000]) * 1024 / 9_000
    assert per_image_kib < 4, f"peak RSS {peaks[1_000]:.0f} MB at 1k images, {peaks[10_000]:.0f} MB at 10k"
