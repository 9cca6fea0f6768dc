"""The Prefect flow over the DVC stages: its DVC-facing helpers, and the flow itself under prefect_test_harness.

The helpers (sslops.orchestration) are tested without Prefect. The flow tests share one tiny git + DVC
project and one temporary Prefect server (starting one costs 10-20 s here), and use the real DVC,
MLflow and Great Expectations.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, mlflow_runs
from sslops import orchestration as orch
from sslops.data.idx import read_idx, write_idx
from sslops.errors import SslopsError
from sslops.orchestration.overrides import BACKUP_DIR
from sslops.orchestration.runner import STOP_GRACE_S
from test_pipeline_dvc import make_repo, sh

GIT = ("git", "-c", "user.name=sslops-test", "-c", "user.email=test@sslops.invalid")


def make_flow_repo(root: Path) -> Path:
    """The tiny project of test_pipeline_dvc, with flows/ and a flow config that retries fast and waits 1 s."""
    make_repo(root)
    sh("cp", "-r", str(REPO / "flows"), str(root / "flows"), cwd=root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["flow"].update(retries=1, retry_delay_s=0, lock_timeout_s=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "add", "-A", cwd=root)
    sh(*GIT, "commit", "-qm", "flows", cwd=root)
    return root


# --- helpers, no Prefect ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "deploy"])
def test_serve_and_deploy_name_a_bad_flow_section_in_one_line(tmp_path: Path, command: str):
    """`make serve` / `make deploy` on a bad params.yaml: the key and what is allowed, exit 2, no traceback."""
    import subprocess

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["flow"]["retries"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    env = {**os.environ, "SSLOPS_ROOT": str(tmp_path), "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never called
    done = subprocess.run(
        [sys.executable, str(REPO / "flows" / "ssl_pipeline.py"), command],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "error: flow.retries in params.yaml: must be greater than or equal to 0, got -1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration  # real DVC
def test_stage_order_is_dvcs_topological_order(tmp_path: Path):
    # Declared out of order: DVC's DAG, not the file order, decides. DVC resolves what only it knows how to:
    # a foreach stage (one node per item), a nested dvc.yaml (addressed from the project root, whatever this
    # process's working directory) and a .dvc-tracked input, which is not a stage to run.
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "report": {"cmd": "cat b > r", "deps": ["b"], "outs": ["r"]},
                    "first": {"cmd": "cat d > a", "deps": ["d"], "outs": ["a"]},
                    "second": {"cmd": "cat a > b", "deps": ["a"], "outs": ["b"]},
                    "alone": {"cmd": "echo > z", "outs": ["z"]},
                    "copy": {
                        "foreach": ["x", "y"],
                        "do": {"cmd": "cat r > ${item}", "deps": ["r"], "outs": ["${item}"]},
                    },
                }
            }
        )
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "inner": {"cmd": "cat ../x > s", "deps": ["../x"], "outs": ["s"]},
                }
            }
        )
    )
    (tmp_path / "d").write_text("data\n")
    sh("dvc", "init", "-q", "--no-scm", cwd=tmp_path)
    sh("dvc", "add", "-q", "d", cwd=tmp_path)
    assert Path.cwd() != tmp_path
    order = orch.stage_order(tmp_path)
    assert sorted(order) == ["alone", "copy@x", "copy@y", "first", "report", "second", "sub/dvc.yaml:inner"]
    assert order.index("first") < order.index("second") < order.index("report") < order.index("copy@x")
    assert order.index("copy@x") < order.index("sub/dvc.yaml:inner")
    assert order.index("alone") < order.index("copy@x")  # ties keep dvc.yaml's order
    assert orch.uncached_outputs(tmp_path) == []

    (tmp_path / "dvc.yaml").write_text("stages:\n  broken: [\n")
    with pytest.raises(SslopsError, match="DVC cannot read the pipeline"):
        orch.stage_order(tmp_path)

    # This project's own pipeline, however many stages it has by now: every stage after its producers.
    order = orch.stage_order(REPO)
    stages = expand_foreach(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert sorted(order) == sorted(stages)
    produced = {}
    for name, spec in stages.items():
        for kind in ("outs", "metrics", "plots"):
            produced.update({(o if isinstance(o, str) else next(iter(o))): name for o in spec.get(kind) or []})
    for name, spec in stages.items():
        for dep in spec.get("deps") or []:
            dep = dep if isinstance(dep, str) else next(iter(dep))
            for out, producer in produced.items():
                if producer != name and (dep == out or dep.startswith(out.rstrip("/") + "/")):
                    assert order.index(producer) < order.index(name), (producer, name)


def expand_foreach(stages: dict) -> dict:
    """dvc.yaml's stages with each `foreach: ${tasks}` group written out per task (`finetune@digits`), as DVC does."""
    tasks = yaml.safe_load((REPO / "params.yaml").read_text())["tasks"]
    out = {}
    for name, spec in stages.items():
        if "foreach" not in spec:
            out[name] = spec
            continue
        assert spec["foreach"] == "${tasks}"
        for key, item in tasks.items():
            text = yaml.safe_dump(spec["do"]).replace("${key}", key).replace("${item.root}", item["root"])
            out[f"{name}@{key}"] = yaml.safe_load(text)
    return out


def test_overrides_are_applied_like_dvc_exp_run_and_restored(tmp_path: Path):
    params = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text()
    params.write_text(original)
    overrides = {"pretrain.images": 50, "pretrain.simclr": {"proj_dim": 64}, "prepare.root": "data/my images"}
    assert orch.override_args(overrides) == [
        "pretrain.images=50",
        "pretrain.simclr.proj_dim=64",
        'prepare.root="data/my images"',
    ]
    before = yaml.safe_load(original)
    with orch.overridden_params(tmp_path, overrides, warn=pytest.fail):
        inside = yaml.safe_load(params.read_text())
        assert inside["pretrain"]["images"] == 50 and inside["prepare"]["root"] == "data/my images"
        assert inside["pretrain"]["simclr"] == {**before["pretrain"]["simclr"], "proj_dim": 64}
        assert {k: v for k, v in inside["pretrain"].items() if k not in ("images", "simclr")} == {
            k: v for k, v in before["pretrain"].items() if k not in ("images", "simclr")
        }
        assert "# Every knob of the pipeline" in params.read_text()  # a round-trip YAML writer (DVC's) keeps comments
    assert params.read_text() == original

    # Values arrive as JSON and reach the stages' YAML reader unchanged: DVC's `-S` string route (DVC 3.67.1)
    # wrote `off` bare (PyYAML reads False) and non-ASCII text as literal \u escapes. List items are keys too.
    with orch.overridden_params(
        tmp_path, {"pretrain.amp": "off", "prepare.root": "données/x", "augment.crop_scale.0": 0.5}, warn=pytest.fail
    ):
        inside = yaml.safe_load(params.read_text())
        assert inside["pretrain"]["amp"] == "off" and inside["prepare"]["root"] == "données/x"
        assert inside["augment"]["crop_scale"] == [0.5, 1.0]
    assert params.read_text() == original

    for typo in ("pretrain.imagez", "pretrain.images.x", "augment.crop_scale.2", "nowhere.images"):
        with (
            pytest.raises(SslopsError, match=f"'{typo}'"),
            orch.overridden_params(tmp_path, {"pretrain.images": 7, typo: 1}, warn=pytest.fail),
        ):
            pytest.fail("entered the block with a key params.yaml does not have")
        assert params.read_text() == original  # nothing written, not even the valid override

    # Values are checked by the stages' own rules before anything is written: a run cannot smuggle in what a
    # stage would refuse (whoever reaches the Prefect API chooses overrides).
    for bad, message in (
        ({"pretrain.images": 0}, "pretrain.images in params.yaml: must be greater than 0, got 0"),
        ({"pretrain.amp": "fp8"}, "pretrain.amp in params.yaml: must be 'auto', 'bf16', 'fp16' or 'off'"),
        ({"flow.retries": "many"}, "flow.retries in params.yaml: must be a valid integer"),
    ):
        with (
            pytest.raises(SslopsError, match=f"override refused, the stages would reject it: {re.escape(message)}"),
            orch.overridden_params(tmp_path, bad, warn=pytest.fail),
        ):
            pytest.fail("entered the block with a value the stages refuse")
        assert params.read_text() == original

    # A run killed inside the block (kill -9) leaves the backup behind; the next run restores it first.
    backup = tmp_path / BACKUP_DIR / "params.yaml"
    backup.parent.mkdir(parents=True)
    backup.write_text(original)
    params.write_text(original.replace("images: 600000", "images: 7"))
    warnings: list[str] = []
    with orch.overridden_params(tmp_path, {}, warn=warnings.append):
        assert params.read_text() == original
    assert warnings == ["restoring params.yaml, left overridden by an interrupted run"]
    assert not backup.exists()


def test_project_lock_waits_for_the_holder_then_fails_after_the_limit(tmp_path: Path):
    released = threading.Event()

    def hold(seconds: float) -> None:
        with orch.project_lock(tmp_path, 0, "nightly run 'a'", on_wait=pytest.fail):
            released.wait(seconds)

    holder = threading.Thread(target=hold, args=(1.0,))
    holder.start()
    time.sleep(0.2)
    waits: list[str] = []
    started = time.monotonic()
    with orch.project_lock(tmp_path, 10, "run 'b'", on_wait=waits.append):  # waits for 'a' to finish
        assert time.monotonic() - started >= 0.5
    holder.join()
    assert len(waits) == 1 and "nightly run 'a'" in waits[0]

    holder = threading.Thread(target=hold, args=(10.0,))
    holder.start()
    time.sleep(0.2)
    try:
        with (
            pytest.raises(orch.PipelineBusy, match=r"holds .*nightly run 'a'.*waited 0.3 s"),
            orch.project_lock(tmp_path, 0.3, "run 'c'", on_wait=waits.append),
        ):
            pytest.fail("entered a held lock")
    finally:
        released.set()
        holder.join()


def test_user_errors_are_final_and_other_failures_retryable():
    validation = [
        "Running stage 'validate':",
        "> python -m sslops validate",
        "sslops validate: error: data validation failed; downstream stages will not run.",
        "1 expectation(s) failed:",
        "  - [manifest] expect_column_values_to_be_in_set(test_in_train) unexpected=2 (5%)",
        "ERROR: failed to reproduce 'validate': failed to run: python -m sslops validate, exited with 1",
    ]
    failure = orch.stage_failure("validate", 255, validation)
    assert not failure.retryable
    assert "expect_column_values_to_be_in_set(test_in_train)" in str(failure)
    assert "ERROR: failed to reproduce" not in str(failure)

    locked = ["ERROR: Unable to acquire lock. Most likely another DVC process is running or was terminated abruptly."]
    assert orch.stage_failure("pretrain", 255, locked).retryable
    crash = [
        "Traceback (most recent call last):",
        "MemoryError",
        "ERROR: failed to reproduce 'pretrain': failed to run: python -m sslops pretrain, exited with -9",
    ]
    failure = orch.stage_failure("pretrain", 255, crash)
    assert failure.retryable and "MemoryError" in str(failure)
    # A shared service that failed (ServiceUnavailable) is said as `unavailable:`: a later attempt may succeed.
    down = [
        "sslops prepare: unavailable: the MLflow tracking server http://127.0.0.1:5001 answers but cannot serve",
        "ERROR: failed to reproduce 'prepare': failed to run: python -m sslops prepare, exited with 3",
    ]
    failure = orch.stage_failure("prepare", 255, down)
    assert failure.retryable and "cannot serve" in str(failure)


@pytest.mark.integration  # real DVC
def test_stage_status_comes_from_dvc_status_json(tmp_path: Path):
    """Stale or up to date is DVC's machine-readable verdict (`dvc status --json`), and it is what the log shows."""
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "count": {"cmd": "grep x: params.yaml > n && echo ran-the-command", "params": ["x"], "outs": ["n"]}
                }
            }
        )
    )
    (tmp_path / "params.yaml").write_text("x: 1\n")
    sh("dvc", "init", "-q", "--no-scm", cwd=tmp_path)
    env = orch.stage_env(tmp_path, None)

    assert orch.stage_changes(tmp_path, "count", env) == [
        {"changed deps": {"params.yaml": "new"}},
        {"changed outs": {"n": "deleted"}},
    ]
    log: list[str] = []
    assert orch.repro_stage(tmp_path, "count", env, log.append) == "ran"
    assert log[0] == "Stage 'count' is out of date: changed deps: params.yaml (new); changed outs: n (deleted)"
    assert "ran-the-command" in log

    assert orch.stage_changes(tmp_path, "count", env) == []
    log.clear()
    assert orch.repro_stage(tmp_path, "count", env, log.append) == "skipped"
    assert log == ["Stage 'count' is up to date (dvc status): skipped"]  # no `dvc repro` needed

    (tmp_path / "params.yaml").write_text("x: 2\n")
    changes = orch.stage_changes(tmp_path, "count", env)
    assert changes == [{"changed deps": {"params.yaml": {"x": "modified"}}}]
    assert orch.describe_changes(changes) == "changed deps: params.yaml (x: modified)"
    assert orch.repro_stage(tmp_path, "count", env, log.append) == "ran"

    # Back to x: 1, which DVC's run cache has seen: restored, the command does not run again.
    (tmp_path / "params.yaml").write_text("x: 1\n")
    log.clear()
    assert orch.repro_stage(tmp_path, "count", env, log.append) == "restored"
    assert "ran-the-command" not in log and (tmp_path / "n").read_text() == "x: 1\n"

    # A failing `dvc status` is a stage failure like a failing `dvc repro`; DVC's errors (a held repository
    # lock is the usual one) are retryable.
    with pytest.raises(orch.StageFailed, match="stage 'nope' failed") as failed:
        orch.stage_changes(tmp_path, "nope", env)
    assert failed.value.retryable


def test_describe_changes_reads_every_kind_of_dvc_status_entry():
    assert orch.describe_changes(
        [
            {"changed deps": {"data": "modified", "params.yaml": {"a.b": "modified", "c": "new"}}},
            {"changed outs": {"out": "deleted"}},
            "changed command",
            "always changed",
        ]
    ) == (
        "changed deps: data (modified), params.yaml (a.b: modified, c: new); changed outs: out (deleted); "
        "changed command; always changed"
    )


def test_only_retryable_stage_failures_are_retried():
    from prefect.states import Failed

    sys.path.insert(0, str(REPO / "flows"))
    try:
        from ssl_pipeline import _retry_unless_user_error
    finally:
        sys.path.remove(str(REPO / "flows"))
    for retryable in (True, False):
        state = Failed(data=orch.StageFailed("validate", "detail", retryable=retryable))
        assert _retry_unless_user_error(None, None, state) is retryable
    assert _retry_unless_user_error(None, None, Failed(data=MemoryError()))


@pytest.mark.integration  # real DVC and a stage command
@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "background"])
def test_interrupting_a_stage_stops_dvc_and_the_stage_command(tmp_path: Path, sigint_ignored: bool):
    """A cancelled flow run (Prefect raises in the flow's thread) must not leave a stage running, also when
    the flow's process runs in the background (`make serve &`, nohup), which starts with SIGINT ignored."""
    # "started" comes a moment after the command starts: DVC (3.67.1, dvc/stage/run.py) ignores SIGINT while it
    # waits for a stage command only once Popen has returned, and a SIGINT within that first instant stops DVC
    # before it reaps its (equally stopped) command: a zombie until init reaps it, which this test would take for a
    # live stage (and which some container inits never do).
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"slow": {"cmd": "echo $$ > pid && sleep 1 && echo started && exec sleep 120", "outs": ["x"]}}}
        )
    )
    sh("dvc", "init", "-q", "--no-scm", cwd=tmp_path)

    interrupted: list[float] = []

    def interrupt_when_started(line: str) -> None:
        if line == "started":
            interrupted.append(time.monotonic())
            raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    if sigint_ignored:  # what a process started in the background inherits, and passes on to its children
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            orch.repro_stage(tmp_path, "slow", orch.stage_env(tmp_path, None), interrupt_when_started)
    finally:
        signal.signal(signal.SIGINT, previous)
    # Stopped by SIGINT, not by the SIGKILL that follows the grace period (measured from the interrupt,
    # not from DVC's start-up, which alone can take seconds on a loaded machine).
    assert time.monotonic() - interrupted[0] < STOP_GRACE_S
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)  # the stage's process is gone
    assert sh("dvc", "status", cwd=tmp_path).returncode == 0  # and DVC's lock was released


def test_summary_names_model_version_runs_and_experiment():
    text = orch.summary_markdown(
        "run `x`",
        [orch.StageOutcome("prepare", "skipped", 0.4), orch.StageOutcome("pretrain", "ran", 12.0)],
        {"pretrain.images": 2},
        "x-1234abcd",
        {
            "model_name": "sslops-encoder-fashion-mnist",
            "version": "3",
            "run_id": "r9",
            "promoted": False,
            "champion_version": "2",
            "reason": "knn_acc 0.81 < 0.83",
        },
        [{"stage": "pretrain", "metric": "knn_acc", "value": 0.8123}],
        [{"stage": "pretrain", "run_id": "abc", "status": "FINISHED", "url": "http://ui/#/experiments/1/runs/abc"}],
    )
    assert "`pretrain.images=2` → DVC experiment `x-1234abcd`" in text
    assert "| prepare | skipped | 0.4 |" in text
    assert "version **3**" in text and "not promoted (champion: version 2): knn_acc 0.81 < 0.83" in text
    assert "| pretrain | knn_acc | 0.8123 |" in text
    assert "[abc](http://ui/#/experiments/1/runs/abc)" in text


# --- the flow, under prefect_test_harness -----------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    """One temporary Prefect server for the module, with its own PREFECT_HOME (not ~/.prefect)."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_HOME: tmp_path_factory.mktemp("prefect-home")}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_flow_repo(tmp_path_factory.mktemp("flow") / "proj")


def run_flow(root: Path, **params: Any):
    sys.path.insert(0, str(REPO / "flows"))
    try:
        from ssl_pipeline import ssl_pipeline
    finally:
        sys.path.remove(str(REPO / "flows"))
    previous = os.environ.get("SSLOPS_ROOT")
    os.environ["SSLOPS_ROOT"] = str(root)  # the project is the process's, as `serve` fixes it: no run parameter
    try:
        return ssl_pipeline(return_state=True, **params)
    finally:
        if previous is None:
            os.environ.pop("SSLOPS_ROOT", None)
        else:
            os.environ["SSLOPS_ROOT"] = previous


def task_runs(flow_run_id: Any) -> list[Any]:
    """The flow run's task runs, in the order they started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(runs, key=lambda r: r.start_time or r.expected_start_time)


def artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.type: a for a in found}


@pytest.mark.integration
def test_flow_runs_each_stage_in_dvc_order_then_skips_what_is_up_to_date(harness, flow_project: Path):
    root = flow_project
    state = run_flow(root)
    assert state.is_completed(), state.message
    run_id = str(state.state_details.flow_run_id)
    order = orch.stage_order(root)
    assert [t.name for t in task_runs(run_id)] == order
    summary = state.result()
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [(s, "ran") for s in order]
    assert summary["experiment"] is None

    # Both directions: every MLflow stage run carries the flow run id, the summary carries their run ids.
    runs = mlflow_runs(root)
    assert runs and {r.data.tags["prefect.flow_run_id"] for r in runs} == {run_id}
    assert {"prepare", "validate", "augment", "pretrain"} <= {r.info.run_name for r in runs}
    found = artifacts(run_id)
    markdown = found["markdown"].data
    stage_runs = [r for r in runs if "sslops.stage" in r.data.tags]  # finetune's children are nested in theirs
    assert len(stage_runs) == len(order)  # one run per stage; a task's prepare and validate run their stages' code
    assert {r.data.tags["sslops.stage"] for r in stage_runs} == {s.split("@")[0].removeprefix("task_") for s in order}
    for run in stage_runs:
        assert (
            f"[{run.info.run_id}](http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            "?workflowType=machine_learning)" in markdown
        )
    assert "| pretrain | ran |" in markdown and "| pretrain | knn_acc |" in markdown
    # The summary names the version the register stage registered.
    assert f"version **{json.loads((root / 'metrics' / 'register.json').read_text())['version']}**" in markdown
    table = json.loads(found["table"].data)
    assert {"stage": "validate", "metric": "success", "value": True} in table
    assert sh("git", "status", "--porcelain", "params.yaml", cwd=root).stdout == ""

    # Nothing changed: DVC skips every stage and no stage logs a new MLflow run.
    again = run_flow(root)
    assert again.is_completed(), again.message
    assert {s["status"] for s in again.result()["stages"]} == {"skipped"}
    assert len(mlflow_runs(root)) == len(runs)


@pytest.mark.integration
def test_overlapping_run_waits_up_to_the_limit_then_fails_without_touching_the_workspace(harness, flow_project: Path):
    lock_before = (flow_project / "dvc.lock").read_text() if (flow_project / "dvc.lock").exists() else None
    with orch.project_lock(flow_project, 0, "Prefect flow run 'nightly-owl'", on_wait=pytest.fail):
        started = time.monotonic()
        state = run_flow(flow_project, overrides={"pretrain.seed": 5})
    assert state.is_failed()
    assert "another pipeline run holds" in state.message and "nightly-owl" in state.message
    assert "waited 1 s" in state.message and time.monotonic() - started < 30
    assert task_runs(state.state_details.flow_run_id) == []
    after = (flow_project / "dvc.lock").read_text() if (flow_project / "dvc.lock").exists() else None
    assert after == lock_before
    assert sh("git", "status", "--porcelain", "params.yaml", cwd=flow_project).stdout == ""


@pytest.mark.integration
def test_failed_validation_fails_the_flow_run_naming_the_expectation_without_retry(harness, flow_project: Path):
    root = flow_project
    d = root / "data" / "fashion-mnist"
    test = read_idx(d / "t10k-images-idx3-ubyte").copy()
    test[:2] = read_idx(d / "train-images-idx3-ubyte")[:2]  # leak two train images into test
    write_idx(d / "t10k-images-idx3-ubyte", test)
    sh("dvc", "add", "-q", "data", cwd=root)
    try:
        state = run_flow(root)
        assert state.is_failed()
        assert "stage 'validate' failed" in state.message
        assert "expect_column_values_to_be_in_set(test_in_train) unexpected=2" in state.message
        runs = {t.name: t for t in task_runs(state.state_details.flow_run_id)}
        assert runs["validate"].state.is_failed()
        assert runs["validate"].run_count == 1  # flow.retries is 1 here, but a data error is final
        order = orch.stage_order(root)
        assert set(runs) == set(order[: order.index("validate") + 1])  # nothing downstream started
        markdown = artifacts(state.state_details.flow_run_id)["markdown"].data
        assert "| validate | failed |" in markdown and "| augment | not run |" in markdown
    finally:
        sh("git", "checkout", "-q", "data.dvc", cwd=root)
        sh("dvc", "checkout", "-q", "data", cwd=root)


def test_flow_config_is_read_from_params_yaml():
    from sslops.config import Project
    from sslops.config.schema import FlowParams

    config = Project(REPO).config("flow")
    assert isinstance(config, FlowParams)
    assert config.model_dump() == yaml.safe_load((REPO / "params.yaml").read_text())["flow"]  # every knob, as written
    assert len(config.cron.split()) == 5
    assert not config.ui_base.endswith("/") and config.mlflow_ui.startswith(config.ui_base)


def test_the_deployment_takes_no_project_folder_from_its_callers():
    """A run parameter naming the project would let whoever reaches the Prefect API run another dvc.yaml."""
    sys.path.insert(0, str(REPO / "flows"))
    try:
        from ssl_pipeline import ssl_pipeline
    finally:
        sys.path.remove(str(REPO / "flows"))
    assert set(ssl_pipeline.parameters.properties) == {"overrides"}


@pytest.mark.integration
def test_a_refused_override_fails_the_run_naming_the_key_before_any_stage(harness, flow_project: Path):
    before = (flow_project / "params.yaml").read_text()
    state = run_flow(flow_project, overrides={"pretrain.batch_size": -8})
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "pretrain.batch_size in params.yaml: must be greater than 0, got -8" in message
    assert task_runs(state.state_details.flow_run_id) == []  # refused before any stage ran
    assert (flow_project / "params.yaml").read_text() == before


def test_the_metrics_table_lists_pretraining_stages_then_each_task(tmp_path: Path):
    """The flow summary's metrics come from metrics/*.json and each task's metrics/tasks/<task>/*.json."""
    (tmp_path / "metrics" / "tasks" / "digits").mkdir(parents=True)
    (tmp_path / "metrics" / "pretrain.json").write_text(json.dumps({"loss": 1.5, "device": "cpu"}))
    (tmp_path / "metrics" / "prepare.json").write_text(json.dumps({"images": 3}))
    (tmp_path / "metrics" / "tasks" / "digits" / "evaluate.json").write_text(json.dumps({"headline": {"gain": 0.5}}))
    rows = orch.read_metrics(tmp_path, ["prepare", "pretrain", "evaluate"])
    assert [(r["stage"], r["metric"], r["value"]) for r in rows] == [
        ("prepare", "images", 3),
        ("pretrain", "loss", 1.5),
        ("evaluate/digits", "headline.gain", 0.5),
    ]
