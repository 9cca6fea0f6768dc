"""MLflow store location, flat params, lineage tags, and the DVC metadata they come from."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import mlflow_runs, set_param
from sslops.adapters import dvcmeta, tracking
from sslops.adapters.provenance import git_state
from sslops.config import Project, flatten, params_hash


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


@pytest.mark.integration  # a real MLflow store
def test_a_stage_closes_the_runs_its_checkout_left_running_and_no_others(project):
    """A run cut off by a killed process or a vanished server stays RUNNING; the next run of the same stage from the
    same checkout (under the project lock, so nothing else of it is alive) marks it and its children KILLED."""
    import mlflow

    experiment_id = tracking.connect(project)
    client = mlflow.MlflowClient()
    ours = {"sslops.stage": "demo", tracking.CHECKOUT_TAG: tracking.checkout_id(project.root)}
    cut_off = client.create_run(experiment_id, tags=ours, run_name="demo")
    child = client.create_run(experiment_id, tags={"mlflow.parentRunId": cut_off.info.run_id}, run_name="child")
    elsewhere = client.create_run(experiment_id, tags={**ours, tracking.CHECKOUT_TAG: "another-machine"})
    other_task = client.create_run(experiment_id, tags={**ours, "sslops.task": "digits"})
    with tracking.stage_run(project, "demo", {}) as run:
        assert run.data.tags[tracking.CHECKOUT_TAG] == ours[tracking.CHECKOUT_TAG]
    status = [client.get_run(r.info.run_id).info.status for r in (cut_off, child, elsewhere, other_task)]
    assert status == ["KILLED", "KILLED", "RUNNING", "RUNNING"]


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
    first = dvcmeta.stage_md5(tmp_path, "prepare")
    assert len(first) == 32
    lock["stages"]["prepare"]["cmd"] = "y"  # the stage ran another command: another stage state
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dvcmeta.stage_md5(tmp_path, "prepare") not in (first, None)
    lock["stages"]["prepare"] = dict(reversed(list({**lock["stages"]["prepare"], "cmd": "x"}.items())))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    assert dvcmeta.stage_md5(tmp_path, "prepare") == first  # the order of the keys is not part of the state


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


def test_a_tracking_server_that_fails_says_whether_credentials_or_the_server_are_to_blame():
    from sslops.adapters.tracking import _server_failure, shown_uri
    from sslops.errors import ServiceUnavailable, SslopsError

    refused = _server_failure(
        "http://h:5001",
        "API request to /api/2.0/mlflow/experiments/get-by-name failed with "
        "error code 401 != 200. Response body: 'You are not authenticated.'",
    )
    assert type(refused) is SslopsError and "MLFLOW_TRACKING_PASSWORD" in str(refused)  # the user's to fix
    down = _server_failure(
        "http://h:5001", "Max retries exceeded (Caused by ResponseError('too many 500 error responses'))"
    )
    assert isinstance(down, ServiceUnavailable) and down.exit_code == 3 and "database" in str(down)
    assert shown_uri("https://bob:secret@mlflow.example:443/x") == "https://mlflow.example:443/x"
    assert shown_uri("postgresql://bob:secret@db:5432/mlflow") == "postgresql://db:5432/mlflow"
    assert shown_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"  # an absolute path keeps its slashes


@pytest.mark.integration  # a real MLflow client on a real (broken) SQLite file
def test_a_local_store_mlflow_cannot_open_is_named_with_what_to_do(project):
    from sslops.errors import SslopsError

    (project.root / "mlflow").mkdir(exist_ok=True)
    (project.root / "mlflow" / "mlflow.db").write_bytes(b"not a database" * 100)  # a corrupt or foreign file
    with pytest.raises(SslopsError) as err:
        tracking.connect(project)
    message = str(err.value)
    assert f"the MLflow store sqlite:///{project.root}/mlflow/mlflow.db cannot be opened" in message
    assert "file is not a database" in message and "move the mlflow/ folder aside" in message
    assert "[SQL:" not in message
    # Another database named by MLFLOW_TRACKING_URI: no advice to move mlflow/ aside, and no password printed.
    other = project.root / "elsewhere.db"
    other.write_bytes(b"not a database" * 100)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{other}"
    try:
        with pytest.raises(SslopsError) as err:
            tracking.connect(project)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert f"sqlite:///{other} cannot be opened" in str(err.value) and "mlflow/ folder" not in str(err.value)
    # A bad `tracking:` section is named as such, not taken for a broken store.
    set_param(project.root, "tracking", "experiment", "")
    with pytest.raises(SslopsError) as err:
        tracking.connect(Project(project.root))
    assert "tracking.experiment in params.yaml" in str(err.value) and "cannot be opened" not in str(err.value)


def test_a_missing_model_version_is_named_without_the_servers_credentials(monkeypatch):
    """A registry lookup that fails names the tracking server, never the user:password in MLFLOW_TRACKING_URI."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from sslops.errors import SslopsError

    class NotFound(BaseHTTPRequestHandler):  # what a real server answers for a model it does not have
        def do_GET(self) -> None:  # noqa: N802 - the http.server interface
            body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not found"}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bob:s3cret@127.0.0.1:{server.server_port}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        with pytest.raises(SslopsError) as err:
            tracking.resolve_version("sslops-encoder-x", "champion")
    finally:
        server.shutdown()
    message = str(err.value)
    assert f"in http://127.0.0.1:{server.server_port}:" in message and "s3cret" not in message and "bob" not in message
