"""`make gpu-check`, the GPU machine's one command, at a CPU's size: every stage through the real `dvc repro` on
generated 224 px photos kept as JPEG stores, then the loop benchmark with the JPEG store loop; its summary."""

from __future__ import annotations

import importlib.util
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


def test_the_gpu_wheels_are_what_sslops_needs_less_what_the_node_has(tmp_path: Path) -> None:
    """`make gpu-wheels` fetches the closure of sslops's requirements (this environment's versions) that the node
    lacks: the stages' tools and their dependencies, not the scheduler's, and none the node has or only another
    Python needs."""
    spec = importlib.util.spec_from_file_location("gpu_wheels", REPO / "scripts" / "gpu_wheels.py")
    gpu_wheels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_wheels)
    needed = gpu_wheels.needed("3.12", {"prefect"})
    for name in ("mlflow", "dvc", "great-expectations", "sqlalchemy", "alembic", "pydantic-core", "pycocotools"):
        assert name in needed, name
    from importlib.metadata import version

    assert needed["mlflow"] == version("mlflow") and needed["dvc"] == version("dvc")
    assert "prefect" not in needed and "apprise" not in needed  # only the scheduler needs these
    with pytest.raises(SystemExit, match="async-timeout"):  # needed on 3.10 only: its markers are read per Python
        gpu_wheels.needed("3.10", {"prefect"})
    node = tmp_path / "freeze.txt"
    node.write_text(
        "# a node\ntorch==2.11.0\nnumpy==2.5.2\nPyYAML==6.0\nscikit_learn==1.7  # its name as pip writes it\n"
    )
    assert gpu_wheels.have(node) == {"torch", "numpy", "pyyaml", "scikit-learn"}
    default = gpu_wheels.have(gpu_wheels.HAVE)  # the CUDA image the checks ran on
    assert {"torch", "torchvision", "numpy", "pandas", "pyarrow"} <= default and "mlflow" not in default
