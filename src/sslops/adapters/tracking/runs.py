"""MLflow runs: one run per stage execution with its lineage tags and dataset inputs, child runs, metrics, tags and
artifacts, and the searches that find runs again."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslops.adapters import dvcmeta
from sslops.adapters.provenance import dvc_stage, lineage_tags
from sslops.adapters.tracking.connection import client, connect, default_uri, shown_uri, tracking_uri
from sslops.config import Project, flatten
from sslops.env import ESTIMATES_ENV, STARTED
from sslops.errors import ServiceUnavailable

if TYPE_CHECKING:
    import mlflow

PREFECT_RUN_ENV = "PREFECT__FLOW_RUN_ID"


@contextlib.contextmanager
def stage_run(
    project: Project, stage: str, params: dict[str, Any], system_metrics: bool = False, task: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Open the MLflow run of one stage execution, with flat params and lineage tags.

    An exception inside the block ends the run as FAILED, so failed stages stay visible in the UI.
    `system_metrics` records CPU/GPU/memory use alongside the run (for long stages such as pretrain).
    `task` names the downstream task a task stage ran for: in the run's name (`finetune/digits`) and tag `sslops.task`.

    A tracking server that stops answering mid-stage (restarted, its database down) fails the stage as
    `ServiceUnavailable`, which a Prefect flow retries; the run it could not close stays RUNNING on the server, and
    the next run of the same stage from this checkout marks it KILLED (`_close_abandoned`), so a stage's history
    never shows two live runs.
    """
    import mlflow

    experiment_id = connect(project)
    checkout = checkout_id(project.root)
    _close_abandoned(experiment_id, checkout, stage, task)
    tags = {**lineage_tags(project.root, stage, params, task), **_dataset_tag(project, stage, task)}
    tags |= {**_orchestrator_tags(), CHECKOUT_TAG: checkout}
    name = stage if task is None else f"{stage}/{task}"
    try:
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=name, tags=tags, log_system_metrics=system_metrics
        ) as run:
            mlflow.log_params({k: _param_value(v) for k, v in flatten({stage: params}).items()})
            _declare_inputs(project.root, tags, context=name)
            estimated = json.loads(os.environ.get(ESTIMATES_ENV) or "{}").get(dvc_stage(stage, task))
            if estimated is not None:  # `sslops repro`'s estimate, beside the actual below
                mlflow.log_metric("estimate.seconds", estimated)
            yield run
            mlflow.log_metric("wall.seconds", round(time.monotonic() - STARTED, 1))  # process start to here
    except mlflow.MlflowException as exc:
        uri = tracking_uri(project)
        if not (uri.startswith(("http://", "https://")) and OUTAGE.search(str(exc))):
            raise
        detail = " ".join(str(exc).split())[:300]
        raise ServiceUnavailable(
            f"the MLflow tracking server {shown_uri(uri)} stopped answering during the stage ({detail}). DVC has not "
            "recorded the stage: run it again once the server is back (a Prefect flow retries it by itself)."
        ) from None


# What a client sees of a server that is restarting or whose database is down, as opposed to a refused request.
OUTAGE = re.compile(r"Max retries exceeded|Connection (refused|aborted|reset)|error code 5\d\d|too many 5\d\d")

CHECKOUT_TAG = "sslops.checkout"


def checkout_id(root: Path) -> str:
    """Which checkout on which machine ran a stage: 16 hex digits of sha256(host:path), tag `sslops.checkout`."""
    import hashlib
    import socket

    return hashlib.sha256(f"{socket.gethostname()}:{root.resolve()}".encode()).hexdigest()[:16]


def _close_abandoned(experiment_id: str, checkout: str, stage: str, task: str | None) -> None:
    """Mark KILLED the runs of this stage (and their child runs) that this checkout left RUNNING.

    A stage runs under the project lock, so no other run of it from this checkout can be alive now: a RUNNING one
    was cut off (a killed process or machine, a tracking server that went away before the run could be closed).
    Runs of other checkouts on a shared server are never touched.
    """
    registry = client()
    found = registry.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CHECKOUT_TAG}` = '{checkout}' and tags.`sslops.stage` = '{stage}' "
        "and attributes.status = 'RUNNING'",
    )
    for run in found:
        if run.data.tags.get("sslops.task") != task:
            continue
        children = registry.search_runs(
            [experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.status = 'RUNNING'",
        )
        for abandoned in [*children, run]:
            registry.set_terminated(abandoned.info.run_id, status="KILLED")
        print(f"marked the unfinished {run.info.run_name} run {run.info.run_id} of this checkout KILLED")


def _declare_inputs(root: Path, tags: dict[str, str], context: str) -> None:
    """Declare the folders a stage run read as its MLflow dataset inputs, each named by its path in the project and
    identified by DVC's md5 of it (the UI's Datasets column): the raw dataset folder (`data.path`/`data.md5`; for
    a prepare run, which DVC has not locked yet, the whole data/ folder of data.dvc) and every upstream stage output
    (`dvc.dep.<path>`). The prepare run also logs its manifest, with its rows (`log_manifest`)."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    folders = {k.removeprefix("dvc.dep."): v for k, v in tags.items() if k.startswith("dvc.dep.")}
    if "data.path" in tags:
        folders[tags["data.path"]] = tags["data.md5"]
    elif tags.get("data.dvc_md5", "untracked") != "untracked":
        folders["data"] = tags["data.dvc_md5"]
    if not folders:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hint that a local path is ambiguous as a source
        datasets = [
            MetaDataset(resolve_dataset_source(str(root / path)), name=path, digest=md5.removesuffix(".dir"))
            for path, md5 in sorted(folders.items())
        ]
    mlflow.log_inputs(datasets=datasets, contexts=[context] * len(datasets), tags_list=[None] * len(datasets))


def _dataset_tag(project: Project, stage: str, task: str | None) -> dict[str, str]:
    """`data.md5`: the DVC md5 of the one dataset folder this run's data came from (the pretraining dataset, or the
    task's), read from the lock entry of the prepare stage that read it. Not on the prepare runs themselves: DVC
    writes their lock entry only after they finish."""
    if stage == "prepare":
        return {}
    source, root = ("prepare", project.config("prepare").root)
    if task is not None:
        source, root = dvc_stage("prepare", task), project.config("tasks")[task].root
    md5 = dvcmeta.dep_md5(project.root, source, root)
    return {"data.md5": md5, "data.path": root} if md5 else {}


@contextlib.contextmanager
def child_run(name: str, tags: dict[str, Any]) -> Iterator[mlflow.ActiveRun]:
    """A run nested under the active stage run (the MLflow UI groups them), in the stage run's experiment.

    MLflow puts a nested run in the *active* experiment, which is the Default one (id 0) unless set: the parent's
    experiment is passed explicitly, or the child runs would land where the UI does not show them beside their
    parent and where a tracking server's users may not write (basic auth: READ on Default).
    Plain `tags` (no dot in the key) are also logged as params."""
    import mlflow

    all_tags = {**{k: str(v) for k, v in tags.items()}, **_orchestrator_tags()}
    parent = mlflow.active_run()
    experiment_id = parent.info.experiment_id if parent is not None else None
    with mlflow.start_run(run_name=name, nested=True, tags=all_tags, experiment_id=experiment_id) as run:
        mlflow.log_params({k: _param_value(v) for k, v in tags.items() if "." not in k})
        yield run


def active_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id


def log_metrics_to(run_id: str, metrics: dict[str, float]) -> None:
    """Add metrics to an earlier run (evaluate scores the models that finetune's child runs trained)."""
    import mlflow

    mlflow.MlflowClient().log_batch(
        run_id, metrics=[mlflow.entities.Metric(k, float(v), _now_ms(), 0) for k, v in metrics.items()]
    )


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _orchestrator_tags() -> dict[str, str]:
    """The Prefect flow run that drove this process, if any (set by flows/ for the DVC subprocesses)."""
    run_id = os.environ.get(PREFECT_RUN_ENV)
    return {"prefect.flow_run_id": run_id} if run_id else {}


def _param_value(value: Any) -> Any:
    """MLflow params are strings of bounded length; long lists are truncated readably."""
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


def log_manifest(source: Path, digest: str, context: str) -> None:
    """Log the manifest at `source` (Parquet) as the run's dataset input (`mlflow.log_input`) under a full-content
    digest, by its schema and source only: reading a million rows back into memory to log them would cost what
    writing them in chunks saved.

    MLflow's own pandas digest samples rows; ours hashes every row, so two manifests that differ in one
    image never share a digest.
    """
    import warnings

    import mlflow
    import pyarrow.parquet as pq
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types.utils import _infer_schema

    first = pq.ParquetFile(source).read_row_group(0).slice(0, 1).to_pandas()  # one row: the columns and types
    with warnings.catch_warnings():
        # MLflow hints about source ambiguity and nullable ints in a *model* schema; neither applies here.
        warnings.simplefilter("ignore", UserWarning)
        dataset = MetaDataset(resolve_dataset_source(str(source)), "manifest", digest, _infer_schema(first))
        mlflow.log_input(dataset, context=context)


def log_params(params: dict[str, Any]) -> None:
    """Params the stage resolves while it runs (what `auto` became), beside the ones logged at its start."""
    import mlflow

    mlflow.log_params({k: _param_value(v) for k, v in params.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: dict[str, Any]) -> None:
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifacts(path: Path, artifact_path: str | None = None) -> None:
    """Attach a file or a folder (e.g. Data Docs) to the active run."""
    import mlflow

    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def find_run(project: Project, filter_string: str) -> mlflow.entities.Run | None:
    """The newest FINISHED run of the project's experiment matching an MLflow search filter."""
    experiment_id = connect(project)
    runs = client().search_runs(
        [experiment_id],
        f"attributes.status = 'FINISHED' and {filter_string}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def run_status(project: Project, run_id: str) -> str | None:
    """How run `run_id` ended (FINISHED, FAILED, KILLED) or RUNNING; None when this project's store has no such run
    (another store, or one reset since)."""
    connect(project)
    try:
        return client().get_run(run_id).info.status
    except mlflow.exceptions.MlflowException:
        return None


def search_runs(project: Project, filter_string: str) -> list[mlflow.entities.Run]:
    """All runs of the project's experiment matching a filter, newest first."""
    experiment_id = connect(project)
    return list(client().search_runs([experiment_id], filter_string, order_by=["attributes.start_time DESC"]))


def stage_runs_tagged(project: Project, key: str, value: str) -> list[mlflow.entities.Run]:
    """Stage runs (not their nested child runs) carrying tag `key` = `value`, oldest first.

    Read-only: a project whose stages never ran has no store yet, and then no runs (no empty store is created).
    """
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(project)
    if uri == default_uri(project) and not (project.root / "mlflow" / "mlflow.db").is_file():
        return []
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(project.config("tracking").experiment)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.\"{key}\" = '{value}'", order_by=["attributes.start_time ASC"]
    )
    return [r for r in runs if "sslops.stage" in r.data.tags]
