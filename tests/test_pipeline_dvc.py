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
from sslops.ml.device import cpu_has_native_bf16

pytestmark = pytest.mark.integration
STAGES = ["prepare", "validate", "augment", "pretrain", "register", "finetune", "evaluate"]


def stage_runs(root: Path):
    """Stage runs only (finetune's nested child runs left out)."""
    return [r for r in mlflow_runs(root) if "sslops.stage" in r.data.tags]


def sh(*cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SSLOPS_ROOT", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


GIT = ("git", "-c", "user.name=sslops-test", "-c", "user.email=test@sslops.invalid")


def make_repo(root: Path, noise: int = 40) -> Path:
    """A copy of this project (pipeline, code, DVC config) with tiny data, committed to a fresh git repo."""
    root.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(small_params((REPO / "params.yaml").read_text()))
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    write_idx_dataset(root / "data" / "fashion-mnist", n_train=120, n_test=40, noise=noise)
    sh("dvc", "add", "-q", "data", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh(*GIT, "commit", "-qm", "tiny project", cwd=root)
    return root


def test_dvc_repro_end_to_end(tmp_path: Path):
    root = make_repo(tmp_path / "proj")
    sh("dvc", "repro", cwd=root)

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(STAGES)
    prepared_md5 = next(o["md5"] for o in lock["prepare"]["outs"] if o["path"] == "artifacts/prepared")
    assert json.loads((root / "metrics" / "validate.json").read_text())["success"] is True
    assert json.loads((root / "metrics" / "prepare.json").read_text())["images"] == 160
    data_md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]

    runs = {r.info.run_name: r for r in stage_runs(root)}
    assert set(runs) == set(STAGES)
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
    assert len(stage_runs(root)) == len(STAGES)  # nothing ran, nothing logged

    # Only a pretrain param changed: DVC reuses the augmentation cache and reruns pretrain and what follows.
    sh("dvc", "exp", "run", "-S", "pretrain.seed=1", cwd=root)
    runs_after = [r.info.run_name for r in stage_runs(root)]
    assert sorted(runs_after) == sorted(STAGES + ["pretrain", "register", "finetune", "evaluate"])

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

    # A fresh MLflow store (a fresh clone, a deleted mlflow/): DVC must register again, not trust the old record.
    shutil.rmtree(root / "mlflow")
    status = sh("dvc", "status", "register", cwd=root).stdout
    assert "mlflow/registered.json" in status and "deleted" in status


def lineage(root: Path, *args: str) -> dict:
    return json.loads(sh(sys.executable, "-m", "sslops", "lineage", *args, "--json", cwd=root).stdout)


def test_two_datasets_give_two_complete_chains_and_champion_moves_only_on_improvement(tmp_path: Path):
    """The issue's must-show: `dvc repro` on a hard and then an easy tiny dataset, in one repository."""
    root = make_repo(tmp_path / "proj", noise=160)  # dataset A: heavy noise, classes overlap
    sh("dvc", "repro", cwd=root)
    reg_a = json.loads((root / "metrics" / "register.json").read_text())
    md5_a = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]

    shutil.rmtree(root / "data")  # dataset B: the same classes with little noise, a new data version
    write_idx_dataset(root / "data" / "fashion-mnist", n_train=120, n_test=40, noise=10, seed=1)
    sh("dvc", "add", "-q", "data", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh(*GIT, "commit", "-qm", "dataset B", cwd=root)
    sh("dvc", "repro", cwd=root)
    reg_b = json.loads((root / "metrics" / "register.json").read_text())
    md5_b = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]

    assert md5_a != md5_b and (reg_a["version"], reg_b["version"]) == (1, 2)
    assert reg_b["value"] > reg_a["value"]  # the easy data gives a better probe (a precondition of this test)
    assert reg_a["promoted"] and reg_b["promoted"] and reg_b["champion_version"] == 2

    chains = {v: lineage(root, str(v)) for v in (1, 2)}
    for v, md5, reg in ((1, md5_a, reg_a), (2, md5_b, reg_b)):
        chain = chains[v]
        assert chain["data"]["dvc_md5"] == md5
        assert chain["pretrain"]["run_id"] == reg["pretrain_run_id"]
        assert chain["validation"]["success"] == "True"
        assert (
            chain["augment_cache"]["md5"]
            and chain["pretrain"]["git_commit"]
            and chain["pretrain"]["git_dirty"] == "false"
        )
        assert chain["pretrain"]["params"]["pretrain.epochs"] == "1"
        assert sorted(d["stage"] for d in chain["downstream"]) == ["evaluate", "finetune"]
    assert chains[1]["data"]["manifest_digest"] != chains[2]["data"]["manifest_digest"]
    assert chains[1]["augment_cache"]["md5"] != chains[2]["augment_cache"]["md5"]
    ids = [{d["run_id"] for d in chains[v]["downstream"]} | {chains[v]["pretrain"]["run_id"]} for v in (1, 2)]
    assert not ids[0] & ids[1]  # two separate chains
    assert chains[2]["model"]["aliases"] == ["candidate", "champion"] and chains[1]["model"]["aliases"] == []

    assert [v["version"] for v in lineage(root, "--data", md5_a)["model_versions"]] == [1]
    assert [v["version"] for v in lineage(root, "--data", md5_b)["model_versions"]] == [2]
    text = sh(sys.executable, "-m", "sslops", "lineage", "champion", cwd=root).stdout
    assert f"data.dvc md5 {md5_b}" in text and "version 2" in text

    # Another encoder of the same data under a stricter rule: a new candidate, but the champion stays. (The same
    # weights again would reuse their version: register is idempotent, see tests/test_reliability.py.)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pretrain"]["seed"] = 1
    params["register"]["min_improvement"] = 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "repro", "register", cwd=root)  # pretrain and register: their params changed
    reg_c = json.loads((root / "metrics" / "register.json").read_text())
    assert reg_c["version"] == 3 and not reg_c["promoted"] and reg_c["champion_version"] == 2
    assert lineage(root, "champion")["model"]["version"] == 2
    assert lineage(root, "candidate")["model"]["version"] == 3

    out = sh(sys.executable, "-m", "sslops", "report", cwd=root).stdout
    assert "| protocol | init |" in out and "champion is version 2" in out
    assert ("bf16 autocast" in out) == cpu_has_native_bf16()
