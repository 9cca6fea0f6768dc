"""The thin module through which sslops talks to MLflow.

Default store: SQLite at <project>/mlflow/mlflow.db with artifacts in <project>/mlflow/artifacts, both by
absolute path so runs land in one place whatever the working directory. MLFLOW_TRACKING_URI overrides
it (a tracking server needs no code change). One experiment per pipeline; one run per stage execution,
named after the stage, params logged flat as `<stage>.<key>`, lineage tags on every run.

The package splits the adapter by job: `connection` (URI, experiment, errors), `runs` (stage runs and what they
record) and `registry` (models, versions, aliases); callers use `tracking.<name>` as before.
"""

from __future__ import annotations

from sslops.adapters.tracking.connection import (  # noqa: F401 - the adapter's API
    EXPERIMENT_KIND,
    _server_failure,
    client,
    connect,
    default_uri,
    shown_uri,
    tracking_uri,
)
from sslops.adapters.tracking.registry import (  # noqa: F401 - the adapter's API
    CANDIDATE,
    CHAMPION,
    FORMAT_TAG,
    MODEL_FORMAT,
    STATE_DICT,
    EncoderDigests,
    describe_version,
    log_encoder,
    model_ref,
    register_version,
    registered_encoder,
    resolve_version,
    search_versions,
    set_alias,
    set_version_tags,
    version_by_alias,
    version_with_sha,
)
from sslops.adapters.tracking.runs import (  # noqa: F401 - the adapter's API
    CHECKOUT_TAG,
    OUTAGE,
    PREFECT_RUN_ENV,
    active_run_id,
    checkout_id,
    child_run,
    find_run,
    log_artifacts,
    log_manifest,
    log_metrics,
    log_metrics_to,
    log_params,
    run_status,
    search_runs,
    set_tags,
    stage_run,
    stage_runs_tagged,
)
