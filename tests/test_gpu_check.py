"""`make gpu-check`, the GPU machine's one command, at a CPU's size: every stage through the real `dvc repro` on
generated 224 px photos kept as JPEG stores, then the loop benchmark with the JPEG store loop; its summary."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO


@pytest.mark.slow
def test_gpu_check_runs_every_stage_and_the_loop_at_a_cpus_size(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK": f"--tiny --device cpu --out {out}"}
    env.pop("SSLOPS_ROOT", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(["make", "gpu-check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["runner"] == "dvc repro"
    assert summary["prepare"]["store"] == "jpeg" and summary["prepare"]["shape"] == [224, 224, 3]
    assert summary["pretrain"]["steps"] > 0 and summary["pretrain"]["device"] == "cpu"
    assert 0 <= summary["evaluate"]["test.acc.frac_1.linear.pretrained"] <= 1
    loop = summary["loop"]
    assert {"model", "jpeg_store_workers_1", "torchvision_workers_0"} <= set(loop["images_per_s"])
    assert set(loop["targets"]) == {"store >= 0.95x model step", "store >= 2x torchvision"}
