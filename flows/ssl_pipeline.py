"""The `ssl-pipeline` Prefect flow: the DVC pipeline, one task per stage, scheduled and watched in Prefect.

A thin shell over sslops.orchestration: DVC keeps the DAG and decides what is stale, Prefect adds the
schedule, retries, logs and a summary per run. Nothing here caches stage work a second time. The knobs of the
deployment are params.yaml's `flow:` section, read as the typed, validated FlowParams like every other section.

    python flows/ssl_pipeline.py          # = make serve: deployment ssl-pipeline/scheduled, run by this process
    python flows/ssl_pipeline.py deploy   # = make deploy: deployment ssl-pipeline/pool, run by flow.work_pool's workers
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.runtime import flow_run
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL
from prefect.states import State

from sslops import orchestration as orch
from sslops.config import ROOT_ENV, Project, find_root
from sslops.config.schema import FlowParams
from sslops.errors import ServiceUnavailable, SslopsError

DEPLOYMENT = "scheduled"  # served by `make serve`
POOL_DEPLOYMENT = "pool"  # registered by `make deploy`, run by a work pool's workers
ENTRYPOINT = "flows/ssl_pipeline.py:ssl_pipeline"
NOTIFY_ENV = "SSLOPS_NOTIFY_URL"  # make deploy: a webhook that hears of every failed run of ssl-pipeline/pool
NOTIFY_BLOCK = "ssl-pipeline-failures"


def _retry_unless_user_error(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry crashes, kills and DVC lock contention; never a stage's own user error (bad data, bad params)."""
    error = state.result(raise_on_failure=False)
    return not (isinstance(error, orch.StageFailed) and not error.retryable)


@task(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=_retry_unless_user_error)
def dvc_stage(root: Path, stage: str) -> str:
    """One DVC stage: `dvc status --json`, then `dvc repro --single-item` if stale, its output streamed into the log."""
    env = orch.stage_env(root, flow_run.get_id())
    return orch.repro_stage(root, stage, env, on_line=get_run_logger().info)


@task(name="dvc-exp-save", task_run_name="dvc-exp-save", cache_policy=NO_CACHE, persist_result=False)
def dvc_exp_save(root: Path, name: str, message: str) -> str:
    """Record the overridden run as one DVC experiment (`dvc exp save`), visible in `dvc exp show`."""
    env = orch.stage_env(root, flow_run.get_id())
    return orch.save_experiment(root, name, message, env, on_line=get_run_logger().info)


@flow(name="ssl-pipeline")
def ssl_pipeline(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the sslops DVC pipeline stage by stage; with overrides, as one DVC experiment.

    The project is fixed where the flow runs ($SSLOPS_ROOT, which `serve` sets, else the working directory), never
    a run parameter: whoever can reach the Prefect API must not point a run at another dvc.yaml.

    Args:
        overrides: params.yaml values to change for this run only, by dotted key, e.g.
            {"pretrain.images": 1200000}. Values keep their JSON types. Keys must exist in params.yaml and values must
            pass the stages' own validation, or the run fails before any stage starts. Empty: a plain `dvc repro`.
    """
    logger = get_run_logger()
    root = find_root()
    project = Project(root)
    config = _flow_config(project)
    run_id, run_name = flow_run.get_id(), flow_run.get_name()
    overrides = overrides or {}
    outcomes: list[orch.StageOutcome] = []
    experiment: str | None = None

    with orch.project_lock(root, config.lock_timeout_s, f"Prefect flow run '{run_name}' ({run_id})", logger.warning):
        stages = orch.stage_order(root)
        logger.info("stages in DVC's order: %s", ", ".join(stages))
        with orch.overridden_params(root, overrides, logger.warning):
            try:
                for stage in stages:
                    started = time.monotonic()
                    try:
                        status = dvc_stage.with_options(
                            name=stage,
                            task_run_name=stage,
                            retries=config.retries,
                            retry_delay_seconds=config.retry_delay_s,
                        )(root, stage)
                    except Exception:
                        outcomes.append(orch.StageOutcome(stage, "failed", time.monotonic() - started))
                        raise
                    outcomes.append(orch.StageOutcome(stage, status, time.monotonic() - started))
                if overrides:
                    experiment = dvc_exp_save(
                        root, f"{run_name}-{run_id[:8]}", f"Prefect flow run {run_name} ({run_id})"
                    )
            except Exception:
                done = {o.stage for o in outcomes}
                outcomes += [orch.StageOutcome(s, "not run", 0.0) for s in stages if s not in done]
                try:
                    _publish(project, config, outcomes, stages, overrides, experiment)
                except Exception:  # the stage's error is the one the run must report
                    logger.exception("could not publish the run summary")
                raise
        return _publish(project, config, outcomes, stages, overrides, experiment)  # still under the lock


def _publish(
    project: Project,
    config: FlowParams,
    outcomes: list[orch.StageOutcome],
    stages: list[str],
    overrides: dict[str, Any],
    experiment: str | None,
) -> dict[str, Any]:
    """Attach the run summary (markdown) and the metrics (table) to the flow run; return the summary."""
    run_id, run_name = flow_run.get_id(), flow_run.get_name()
    metrics = orch.read_metrics(project.root, stages)
    model = orch.registered_model(project.root)
    runs = orch.mlflow_runs(project, run_id, config.ui_base)
    markdown = orch.summary_markdown(
        f"ssl-pipeline run `{run_name}`", outcomes, overrides, experiment, model, metrics, runs
    )
    create_markdown_artifact(markdown, key="ssl-pipeline-summary", description="stages, metrics, MLflow runs, model")
    if metrics:
        create_table_artifact(metrics, key="ssl-pipeline-metrics", description="metrics/*.json after the run")
    return {
        "stages": [o.__dict__ for o in outcomes],
        "experiment": experiment,
        "model_version": (model or {}).get("version"),
        "mlflow_runs": runs,
        "metrics": metrics,
    }


def _flow_config(project: Project) -> FlowParams:
    """params.yaml's `flow:` section, validated (a bad or missing key fails naming it, before any stage runs)."""
    return cast(FlowParams, project.config("flow"))


def _require_api() -> Project:
    """The project, once PREFECT_API_URL is known to be set.

    Without it Prefect would serve or deploy against a temporary server that vanishes with this process, and the
    deployment would never show in the UI.
    """
    if not PREFECT_API_URL.value():
        raise SystemExit(
            "PREFECT_API_URL is not set: start a server (make prefect-server, or make stack and "
            "`source .stack/client.env`) and export PREFECT_API_URL=http://127.0.0.1:4200/api, or point it at a "
            "shared server."
        )
    return Project(find_root())


def serve() -> None:
    """Serve the flow as deployment `ssl-pipeline/scheduled` on the cron schedule in params.yaml (`flow:`)."""
    project = _require_api()
    config = _flow_config(project)
    os.environ[ROOT_ENV] = str(project.root)  # the project of every run of this deployment, fixed here
    ssl_pipeline.serve(name=DEPLOYMENT, schedules=[Cron(config.cron, timezone=config.timezone)])


def deploy() -> None:
    """Register deployment `ssl-pipeline/pool` on the work pool `flow.work_pool`, on `flow.cron`, and return.

    The runs are executed by the pool's workers (`prefect worker start --pool ...`; `make stack` starts one), which
    load the flow from this checkout (a `set_working_directory` pull step) with SSLOPS_ROOT fixed to it: a worker
    must run on the machine that holds this checkout, its data and its DVC cache. Deploying again updates the
    deployment (schedule, parameters) in place.
    """
    project = _require_api()
    config = _flow_config(project)
    deployment_id = ssl_pipeline.from_source(str(project.root), ENTRYPOINT).deploy(
        name=POOL_DEPLOYMENT,
        work_pool_name=config.work_pool,
        schedules=[Cron(config.cron, timezone=config.timezone)],
        parameters={"overrides": {}},
        job_variables={"env": {ROOT_ENV: str(project.root)}},
        description=f"The sslops DVC pipeline of {project.root}, run by the workers of work pool {config.work_pool}.",
        print_next_steps=False,
    )
    print(f"deployment ssl-pipeline/{POOL_DEPLOYMENT} ({deployment_id}) on work pool {config.work_pool!r}")
    url = os.environ.get(NOTIFY_ENV)
    if url:
        _notify_on_failure(deployment_id, url)
        print(f"a failed run of ssl-pipeline/{POOL_DEPLOYMENT} posts to the webhook in ${NOTIFY_ENV}")


def _notify_on_failure(deployment_id: UUID, url: str) -> None:
    """A webhook notification block and an automation: every failed run of the deployment (scheduled or not) posts
    its name, state message and UI link to `url`. Deploying again replaces both. The URL comes from the environment
    of whoever deploys (a chat webhook URL is a secret), is stored in the block, and is never a run parameter."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block = CustomWebhookNotificationBlock(
        name="ssl-pipeline failures", url=url, method="POST", json_data={"text": "{{subject}}\n{{body}}"}
    )
    block_id = block.save(NOTIFY_BLOCK, overwrite=True)
    name = f"ssl-pipeline/{POOL_DEPLOYMENT}: notify on failure"
    with contextlib.suppress(ValueError):  # not there yet
        Automation.read(name=name).delete()
    Automation(
        name=name,
        description=f"Posts to the webhook block {NOTIFY_BLOCK!r} when a run of ssl-pipeline/{POOL_DEPLOYMENT} fails.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="ssl-pipeline run {{ flow_run.name }} {{ flow_run.state.name }}",
                body="{{ flow_run.state.message }}\n{{ flow_run|ui_url }}",
            )
        ],
    ).create()


if __name__ == "__main__":
    commands = {"serve": serve, "deploy": deploy}
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command not in commands or len(sys.argv) > 2:
        raise SystemExit(f"usage: python {sys.argv[0]} [{'|'.join(commands)}]")
    try:
        commands[command]()
    except SslopsError as exc:  # a bad params.yaml or no project: one line, as the sslops commands print it
        kind = "unavailable" if isinstance(exc, ServiceUnavailable) else "error"
        print(f"{kind}: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
