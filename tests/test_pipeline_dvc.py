"""Integration: the real `dvc repro` of the whole pipeline, in a temporary git + DVC repository.

Nothing is faked: a git repo, `dvc init`, `dvc add data`, `dvc repro`, a real MLflow SQLite store and a
real Great Expectations run; only the data is small and synthetic.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, mlflow_runs, small_params, write_idx_dataset

from sslops.data.idx import read_idx, write_idx

pytestmark = pytest.mark.integration


def sh(*cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SSLOPS_ROOT", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def make_repo(root: Path) -> Path:
    """A copy of this project (pipeline, code, DVC config) with tiny data, committed to a fresh git repo."""
    root.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(small_params((REPO / "params.yaml").read_text()))
    git = ("git", "-c", "user.name=sslops-test", "-c", "user.email=test@sslops.invalid")
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    write_idx_dataset(root / "data" / "fashion-mnist", n_train=120, n_test=40)
    sh("dvc", "add", "-q", "data", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh(*git, "commit", "-qm", "tiny project", cwd=root)
    return root


def test_dvc_repro_end_to_end(tmp_path: Path):
    root = make_repo(tmp_path / "proj")
    sh("dvc", "repro", cwd=root)

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"prepare", "validate", "augment", "pretrain"}
    prepared_md5 = next(o["md5"] for o in lock["prepare"]["outs"] if o["path"] == "artifacts/prepared")
    assert json.loads((root / "metrics" / "validate.json").read_text())["success"] is True
    assert json.loads((root / "metrics" / "prepare.json").read_text())["images"] == 160
    data_md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]

    runs = {r.info.run_name: r for r in mlflow_runs(root)}
    assert set(runs) == {"prepare", "validate", "augment", "pretrain"}
    commit = sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["git.commit"] == commit and run.data.tags["git.dirty"] == "false"
        assert run.data.tags["data.dvc_md5"] == data_md5
        assert len(run.data.tags["params.hash"]) == 16
    assert runs["prepare"].data.tags["dvc.dep.data"] == data_md5
    assert runs["validate"].data.tags["dvc.dep.artifacts/prepared"] == prepared_md5
    assert runs["prepare"].inputs.dataset_inputs[0].dataset.name == "manifest"
    assert runs["validate"].data.tags["data.manifest_digest"] == runs["prepare"].data.tags["data.manifest_digest"]

    again = sh("dvc", "repro", cwd=root)
    assert "Data and pipelines are up to date" in again.stdout
    assert len(mlflow_runs(root)) == 4  # nothing ran, nothing logged

    # Only a pretrain param changed: DVC reuses the augmentation cache and reruns pretrain alone.
    sh("dvc", "exp", "run", "-S", "pretrain.seed=1", cwd=root)
    runs_after = [r.info.run_name for r in mlflow_runs(root)]
    assert sorted(runs_after) == ["augment", "prepare", "pretrain", "pretrain", "validate"]

    # Leak test images into train: validate fails, names the expectation, and the pipeline stops.
    d = root / "data" / "fashion-mnist"
    test = read_idx(d / "t10k-images-idx3-ubyte").copy()
    test[:2] = read_idx(d / "train-images-idx3-ubyte")[:2]
    write_idx(d / "t10k-images-idx3-ubyte", test)
    sh("dvc", "add", "data", cwd=root)
    failed = sh("dvc", "repro", cwd=root, check=False)
    assert failed.returncode != 0
    assert "expect_column_values_to_be_in_set(test_in_train) unexpected=2" in failed.stderr
    assert "Traceback" not in failed.stderr
    status = sh("dvc", "status", "validate", cwd=root).stdout
    assert "changed deps" in status  # validate's lock entry still describes the last good data
