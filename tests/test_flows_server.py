"""Integration: the deployment as a person runs it, against a real `prefect server start`.

A Prefect server on a free loopback port, `python flows/ssl_pipeline.py` serving the deployment from a
tiny git + DVC project, and an ad-hoc run with an override triggered through the Prefect client: the
run must complete, leave a DVC experiment with the override, and tag its MLflow runs with its id.

Marked `stack` with the team setup's tests (`make test-stack`): a real server and a whole served pipeline run take
about four minutes of a 2-core machine, which `make test` cannot spare within its 20 minutes; the flow itself is
tested under `prefect_test_harness` in tests/test_flows.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import REPO, mlflow_runs
from test_flows import make_flow_repo
from test_pipeline_dvc import sh

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.stack]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    check: Callable[[], object],
    not_yet: tuple[type[Exception], ...],
    timeout: float,
    what: str,
    procs: list[subprocess.Popen],
) -> None:
    """Poll `check` until it returns a true value without raising one of `not_yet`; fail if a process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: {proc.args} exited with {proc.returncode}")
        with contextlib.suppress(*not_yet):
            if check():
                return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not ready after {timeout} s")


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], list[subprocess.Popen]]]:
    """A real Prefect server (SQLite under a temporary PREFECT_HOME); yields its API URL and client env."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    for key in ("SSLOPS_ROOT", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs = [server]  # the test appends the serving process
        try:
            health = f"{api}/health"
            wait_until(
                lambda: urllib.request.urlopen(health, timeout=2).status == 200,
                (OSError,),
                90,
                f"prefect server (log: {log.name})",
                procs,
            )
            yield api, env, procs
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGINT)
            for proc in reversed(procs):
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_served_deployment_runs_an_override_as_a_dvc_experiment(tmp_path: Path, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
        LogFilterTextSearch,
    )
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    api, env, procs = prefect_server
    root = make_flow_repo(tmp_path / "proj")
    committed_params = (root / "params.yaml").read_text()
    settings = {PREFECT_API_URL: api, PREFECT_HOME: env["PREFECT_HOME"]}  # this process talks to the same server
    with open(tmp_path / "serve.log", "w") as log, temporary_settings(settings):
        procs.append(
            subprocess.Popen(
                [sys.executable, "flows/ssl_pipeline.py"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        )

        def deployment():
            with get_client(sync_client=True) as client:
                return client.read_deployment_by_name("ssl-pipeline/scheduled")

        wait_until(deployment, (ObjectNotFound,), 90, f"served deployment (log: {log.name})", procs)
        assert deployment().schedules[0].schedule.cron == "0 2 * * *"  # flow.cron from params.yaml
        run = run_deployment(
            "ssl-pipeline/scheduled", parameters={"overrides": {"pretrain.seed": 1}}, timeout=400, poll_interval=2
        )
        with get_client(sync_client=True) as client:

            def logs(phrase: str) -> list[str]:
                """The run's log lines that contain `phrase` (the server's search ORs bare words)."""
                found = client.read_logs(
                    LogFilter(
                        flow_run_id=LogFilterFlowRunId(any_=[run.id]), text=LogFilterTextSearch(query=f'"{phrase}"')
                    )
                )
                return [entry.message for entry in found if phrase.lower() in entry.message.lower()]

            assert run.state.is_completed(), f"{run.state.message}\n" + "\n".join(logs("error"))
            assert logs("Running stage 'pretrain'")  # the stage's output is streamed into the task's log
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            markdown = next(a.data for a in found if a.type == "markdown")

    # DVC: the override ran as an experiment, `dvc exp show` holds it, and the workspace params are back.
    experiment = f"{run.name}-{str(run.id)[:8]}"
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=root).stdout)
    exps = {r["name"]: r["data"] for base in shown for e in base.get("experiments") or [] for r in e["revs"]}
    assert experiment in exps, list(exps)
    assert exps[experiment]["params"]["params.yaml"]["data"]["pretrain"]["seed"] == 1
    assert "metrics/pretrain.json" in exps[experiment]["metrics"]
    assert (root / "params.yaml").read_text() == committed_params

    # MLflow <-> Prefect: the stage runs carry the flow run id, the summary carries their run ids.
    runs = mlflow_runs(root)
    assert {"prepare", "pretrain"} <= {r.info.run_name for r in runs}
    stage_runs = [r for r in runs if "sslops.stage" in r.data.tags]  # finetune's child runs are nested in theirs
    assert {"prepare", "pretrain"} <= {r.data.tags["sslops.stage"] for r in stage_runs}
    for r in runs:
        assert r.data.tags["prefect.flow_run_id"] == str(run.id)
    assert all(r.info.run_id in markdown for r in stage_runs)
    assert {r.data.params["pretrain.seed"] for r in runs if r.info.run_name == "pretrain"} == {"1"}


def test_make_prefect_server_on_another_port_serves_a_ui_that_calls_that_port(tmp_path: Path):
    """The flows README offers `make prefect-server PREFECT_PORT=4301` for a busy port; the UI it served called the
    API on 4200 ("Can't connect to Server API"), because `--port` does not reach the UI's settings."""
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PREFECT_API_URL", None)  # the UI would take it over the server's own address
    with open(tmp_path / "make.log", "w") as log:
        make = subprocess.Popen(
            ["make", "-s", "-C", str(REPO), "prefect-server", f"PREFECT_PORT={port}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make, the shell and the server: one process group to stop
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(
                lambda: urllib.request.urlopen(f"{base}/api/health", timeout=2).status == 200,
                (OSError,),
                90,
                f"make prefect-server (log: {log.name})",
                [make],
            )
            settings = json.loads(urllib.request.urlopen(f"{base}/ui-settings", timeout=5).read())
            assert settings["api_url"] == f"{base}/api"
        finally:
            os.killpg(make.pid, signal.SIGINT)
            try:
                make.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
