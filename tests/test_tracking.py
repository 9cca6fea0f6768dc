"""MLflow store location, flat params, lineage tags, and the DVC metadata they come from."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import mlflow_runs
from sslops.adapters import dvcmeta, tracking
from sslops.adapters.provenance import git_state
from sslops.config import flatten, params_hash


def test_default_store_is_sqlite_by_absolute_path(project, monkeypatch):
    monkeypatch.chdir(project.root.parent)
    assert tracking.tracking_uri(project) == f"sqlite:///{project.root}/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(project) == "http://127.0.0.1:5999"


@pytest.mark.integration  # a real MLflow store
def test_stage_run_logs_flat_params_tags_and_artifact_location(project, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # artifacts must not land in ./mlruns of the working directory
    with tracking.stage_run(project, "demo", {"lr": 0.1, "opt": {"name": "sgd"}}):
        tracking.log_metrics({"loss": 1.5})
    (run,) = mlflow_runs(project.root)
    assert run.info.run_name == "demo"
    assert run.data.params == {"demo.lr": "0.1", "demo.opt.name": "sgd"}
    assert run.data.tags["params.hash"] == params_hash({"lr": 0.1, "opt": {"name": "sgd"}})
    assert run.data.tags["sslops.stage"] == "demo"
    assert run.info.artifact_uri.startswith((project.root / "mlflow" / "artifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.integration  # a real MLflow store
def test_the_experiment_opens_on_its_training_runs_in_the_mlflow_ui(project):
    """MLflow 3's UI shows an experiment without a kind as a GenAI (traces) overview: sslops' experiment declares
    that it holds model development runs, also when an older store created it without the tag."""
    import mlflow

    experiment_id = tracking.connect(project)
    client = mlflow.MlflowClient()
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    client.delete_experiment_tag(experiment_id, "mlflow.experimentKind")  # as a store from before this change
    assert tracking.connect(project) == experiment_id
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.integration  # a real MLflow store
def test_prefect_flow_run_id_is_tagged(project, monkeypatch):
    monkeypatch.setenv(tracking.PREFECT_RUN_ENV, "flow-run-123")
    with tracking.stage_run(project, "demo", {}):
        pass
    assert mlflow_runs(project.root)[0].data.tags["prefect.flow_run_id"] == "flow-run-123"


def test_flatten_and_params_hash_are_order_independent():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    assert params_hash({"x": 1, "y": 2}) == params_hash({"y": 2, "x": 1}) != params_hash({"x": 1, "y": 3})


def test_dvc_metadata_from_lock_and_pointer(tmp_path: Path):
    (tmp_path / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "abc.dir", "path": "data"}]}))
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"prepare": {"deps": ["data", "src"]}, "validate": {"deps": ["artifacts/prepared"]}}})
    )
    lock = {"stages": {"prepare": {"cmd": "x", "outs": [{"path": "artifacts/prepared", "md5": "p.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dvcmeta.data_md5(tmp_path) == "abc.dir"
    assert dvcmeta.upstream_md5s(tmp_path, "prepare") == {"data": "abc.dir"}
    assert dvcmeta.upstream_md5s(tmp_path, "validate") == {"artifacts/prepared": "p.dir"}
    assert dvcmeta.stage_md5(tmp_path, "validate") is None
    assert len(dvcmeta.stage_md5(tmp_path, "prepare")) == 32


def test_git_state_reports_dirty_code_but_not_pipeline_outputs(tmp_path: Path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for name in ("code.py", "dvc.lock"):
        (tmp_path / name).write_text("v1")
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text("v2")
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "code.py").write_text("v2")
    assert git_state(tmp_path)[1] is True
