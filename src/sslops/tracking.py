"""The thin module through which sslops talks to MLflow.

Default store: SQLite at <project>/mlflow/mlflow.db with artifacts in <project>/mlflow/artifacts, both by
absolute path so runs land in one place whatever the working directory. MLFLOW_TRACKING_URI overrides
it (a tracking server needs no code change). One experiment per pipeline; one run per stage execution,
named after the stage, params logged flat as `<stage>.<key>`, lineage tags on every run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslops.config import Project, flatten
from sslops.provenance import lineage_tags

if TYPE_CHECKING:
    import mlflow
    import pandas as pd

PREFECT_RUN_ENV = "PREFECT__FLOW_RUN_ID"


def default_uri(project: Project) -> str:
    """The project's own SQLite store, by absolute path."""
    return f"sqlite:///{project.root / 'mlflow' / 'mlflow.db'}"


def tracking_uri(project: Project) -> str:
    """MLFLOW_TRACKING_URI if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(project)


def _experiment_id(project: Project) -> str:
    import mlflow

    name = (project.params.get("tracking") or {}).get("experiment", "sslops")
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if mlflow.get_tracking_uri() == default_uri(project):
        # A SQLite store's artifact root would otherwise default to ./mlruns of the current directory.
        location = (project.root / "mlflow" / "artifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def connect(project: Project) -> str:
    """Point MLflow at the project's store; returns the experiment id."""
    import mlflow

    (project.root / "mlflow").mkdir(exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri(project))
    return _experiment_id(project)


@contextlib.contextmanager
def stage_run(project: Project, stage: str, params: dict[str, Any], system_metrics: bool = False) -> Iterator["mlflow.ActiveRun"]:
    """Open the MLflow run of one stage execution, with flat params and lineage tags.

    An exception inside the block ends the run as FAILED, so failed stages stay visible in the UI.
    `system_metrics` records CPU/GPU/memory use alongside the run (for long stages such as pretrain).
    """
    import mlflow

    experiment_id = connect(project)
    tags = lineage_tags(project.root, stage, params)
    if os.environ.get(PREFECT_RUN_ENV):
        tags["prefect.flow_run_id"] = os.environ[PREFECT_RUN_ENV]
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags, log_system_metrics=system_metrics) as run:
        mlflow.log_params({k: _param_value(v) for k, v in flatten({stage: params}).items()})
        yield run


def _param_value(value: Any) -> Any:
    """MLflow params are strings of bounded length; long lists are truncated readably."""
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


def log_manifest(manifest: "pd.DataFrame", source: Path, digest: str, context: str) -> None:
    """Log the manifest as the run's dataset input (`mlflow.log_input`) under a full-content digest.

    MLflow's own pandas digest samples rows; ours hashes every row, so two manifests that differ in one
    image never share a digest.
    """
    import warnings

    import mlflow

    with warnings.catch_warnings():
        # MLflow hints about source ambiguity and nullable ints in a *model* schema; neither applies here.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(manifest, source=str(source), name="manifest", digest=digest)
        mlflow.log_input(dataset, context=context)


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
