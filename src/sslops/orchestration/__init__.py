"""Drive the DVC pipeline from an orchestrator, stage by stage, without importing one.

The Prefect flow in flows/ is a thin shell over these functions, so the logic that matters (stage order,
staleness, overrides, locking, the run summary) is plain Python that tests can call without a Prefect
server, and nothing under src/sslops imports Prefect: the `dvc repro` path never pays for it. Nor does this
package import the CLI or the stages: it drives them through DVC, in child processes.

- pipeline: the stage order is DVC's own DAG (its index of dvc.yaml), never a second copy of it.
- runner: each stage runs as `dvc repro --single-item <stage>` once `dvc status --json` says it is stale, so
  DVC alone decides; `dvc exp save` records an overridden run as one DVC experiment.
- overrides: overrides are applied to params.yaml by the rules of `dvc exp run -S`, and params.yaml is restored
  afterwards so a later scheduled run never inherits an ad-hoc override.
- lock (`sslops.pipeline_lock`, re-exported): one pipeline run at a time per project, also taken by each stage.
- summary: the run summary (stages, model, metrics, MLflow runs) as markdown.
"""

from sslops.orchestration.overrides import overridden_params, override_args
from sslops.orchestration.pipeline import stage_order, uncached_outputs
from sslops.orchestration.runner import (
    StageFailed,
    describe_changes,
    repro_stage,
    save_experiment,
    stage_changes,
    stage_env,
    stage_failure,
)
from sslops.orchestration.summary import StageOutcome, mlflow_runs, read_metrics, registered_model, summary_markdown
from sslops.pipeline_lock import PipelineBusy, project_lock

__all__ = [
    "PipelineBusy",
    "StageFailed",
    "StageOutcome",
    "describe_changes",
    "mlflow_runs",
    "override_args",
    "overridden_params",
    "project_lock",
    "read_metrics",
    "registered_model",
    "repro_stage",
    "save_experiment",
    "stage_changes",
    "stage_env",
    "stage_failure",
    "stage_order",
    "summary_markdown",
    "uncached_outputs",
]
