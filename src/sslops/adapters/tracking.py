"""The thin module through which sslops talks to MLflow.

Default store: SQLite at <project>/mlflow/mlflow.db with artifacts in <project>/mlflow/artifacts, both by
absolute path so runs land in one place whatever the working directory. MLFLOW_TRACKING_URI overrides
it (a tracking server needs no code change). One experiment per pipeline; one run per stage execution,
named after the stage, params logged flat as `<stage>.<key>`, lineage tags on every run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sslops.adapters import dvcmeta
from sslops.adapters.provenance import dvc_stage, lineage_tags
from sslops.config import Project, flatten
from sslops.env import ESTIMATES_ENV, STARTED
from sslops.errors import ServiceUnavailable, SslopsError

if TYPE_CHECKING:
    import mlflow
    import pandas as pd

PREFECT_RUN_ENV = "PREFECT__FLOW_RUN_ID"
CANDIDATE, CHAMPION = "candidate", "champion"  # registry aliases: the version register wrote last, the best one
FORMAT_TAG, MODEL_FORMAT = "model.format", "pt2"  # how the version's MLflow model is serialized: pickle-free
STATE_DICT = "state_dict"  # artifact folder of the register run: encoder.pt (weights) + encoder.json (how to rebuild)


def default_uri(project: Project) -> str:
    """The project's own SQLite store, by absolute path."""
    return f"sqlite:///{project.root / 'mlflow' / 'mlflow.db'}"


def tracking_uri(project: Project) -> str:
    """MLFLOW_TRACKING_URI if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(project)


# MLflow 3's UI opens an experiment without this tag on its GenAI (traces) overview; with it, on the training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(project: Project) -> str:
    import mlflow

    name = project.config("tracking").experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if not EXPERIMENT_KIND.items() <= experiment.tags.items():  # created before sslops set the kind
            for key, value in EXPERIMENT_KIND.items():
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    location = None
    if mlflow.get_tracking_uri() == default_uri(project):
        # A SQLite store's artifact root would otherwise default to ./mlruns of the current directory.
        location = (project.root / "mlflow" / "artifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def connect(project: Project) -> str:
    """Point MLflow at the project's store; returns the experiment id.

    A tracking server is checked first, with the bounded timeout and retries of params.yaml `tracking:` (MLflow's
    own defaults retry for minutes), so a stage fails in seconds with one line naming the URI instead of
    starting work it cannot record. Variables already set in the environment win over params.yaml.
    """
    import mlflow

    uri = tracking_uri(project)
    server = uri.startswith(("http://", "https://"))
    if server:
        cfg = project.config("tracking")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(math.ceil(cfg.http_timeout_s)))  # whole seconds
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.http_retries))
        _check_reachable(uri, cfg.http_timeout_s)
    else:
        (project.root / "mlflow").mkdir(exist_ok=True)
    mlflow.set_tracking_uri(uri)
    try:
        return _experiment_id(project)  # for a server: the stage's first request that needs its database
    except mlflow.MlflowException as exc:
        if not server:
            raise  # MLflow's own message names what is wrong with the store
        raise _server_failure(shown_uri(uri), str(exc)) from None
    except SslopsError:
        raise  # our own, already clear (e.g. a bad `tracking:` section)
    except Exception as exc:  # SQLAlchemy or a migration failing: the store is not one MLflow can open
        if server:
            raise
        raise _store_failure(shown_uri(uri), exc, own=uri == default_uri(project)) from None


def _store_failure(shown: str, exc: Exception, own: bool) -> Exception:
    """A database store MLflow cannot open (corrupt, or made by another MLflow version), named with what to do;
    `own`: the project's SQLite file under mlflow/, which can be moved aside to start a new store."""
    detail = " ".join(str(exc).split("[SQL:")[0].split())[:300]
    fresh = "; to start a new store, move the mlflow/ folder aside" if own else ""
    return SslopsError(
        f"the MLflow store {shown} cannot be opened ({type(exc).__name__}: {detail}). If another MLflow version made "
        f"it: back it up, then `mlflow db upgrade <its URI>`{fresh}."
    )


def _server_failure(shown: str, message: str) -> Exception:
    """A tracking server that answers but refuses or fails the first request, as one error that says which:
    credentials (the user's to fix) or the server and its database (unavailable: a later run may succeed)."""

    detail = " ".join(message.split())[:300]
    if re.search(r"\b40[13]\b", message):
        return SslopsError(
            f"the MLflow tracking server {shown} refused this stage's credentials ({detail}). Set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (`make stack` writes them to .stack/client.env)."
        )
    return ServiceUnavailable(
        f"the MLflow tracking server {shown} answers but cannot serve requests ({detail}). Its backend database "
        "may be down: check the server's log and its database (`make stack-status` for the team stack)."
    )


def shown_uri(uri: str) -> str:
    """The URI without any user:password part: what may be printed, logged or written into a file in git."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri  # nothing to hide; and geturl() would drop the empty authority of sqlite:////abs/path
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _check_reachable(uri: str, timeout_s: float) -> None:
    """A TCP connection to the server's host and port, within `timeout_s`, or one named error.

    Only reachability is checked (not TLS or auth, which MLflow's own client settings govern), and the URI is shown
    without any user:password part.
    """
    import socket
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    parts, shown = urlsplit(uri), shown_uri(uri)
    if parts.scheme in getproxies() and not proxy_bypass(parts.hostname or ""):
        return  # reached through a proxy, as MLflow's client does: only its bounded retries can tell
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise ServiceUnavailable(
            f"the MLflow tracking server {shown} does not answer ({exc}). Check that it runs (make stack, or "
            "`mlflow server`), the host and port in MLFLOW_TRACKING_URI, and the network; unset MLFLOW_TRACKING_URI "
            "to use the project's own store."
        ) from None


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


def log_manifest(manifest: pd.DataFrame, source: Path, digest: str, context: str) -> None:
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


# --- Model registry: versions and aliases (no registry stages) ---------------------------------------


def client() -> mlflow.MlflowClient:
    import mlflow

    return mlflow.MlflowClient()


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


def log_encoder(model: Any, input_example: Any, state_dir: Path, trained_by: str) -> mlflow.models.model.ModelInfo:
    """Log an encoder as a pickle-free MLflow model plus its plain state_dict files (`state_dict/`).

    The logged model belongs to the run that trained it (`trained_by`, the pretrain run): MLflow links it to that
    run and to the run's final metrics (`final.*`, logged at step 0), so the UI's model page shows where the weights
    came from. The state_dict files go to the active (register) run, which the version's `register.run_id` names.

    The model is exported with torch.export (MLflow's `pt2` format; dynamic batch dimension, from an example of
    two images), so users and `mlflow models serve` load it with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false and
    without sslops installed. sslops' own consumers train the encoder, which needs the real `Encoder`, so they
    rebuild it from `state_dict/encoder.json` and load `state_dict/encoder.pt` with weights_only
    (`registered_encoder` + `sslops.ml.models.load_encoder_dir`).
    Requirements are pinned explicitly (MLflow would otherwise load the model in a subprocess to infer them).
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.as_tensor(input_example)).numpy()
    signature = infer_signature(input_example, output)
    mlflow.log_artifacts(str(state_dir), STATE_DICT)
    return mlflow.pytorch.log_model(
        model,
        name="encoder",
        signature=signature,
        input_example=input_example,
        serialization_format=MODEL_FORMAT,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        run_id=trained_by,
    )


def register_version(model_uri: str, name: str, tags: dict[str, Any]) -> mlflow.entities.model_registry.ModelVersion:
    import mlflow

    return mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})


def version_by_alias(name: str, alias: str) -> mlflow.entities.model_registry.ModelVersion | None:
    """The version an alias points to, or None when the model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def resolve_version(name: str, ref: str) -> mlflow.entities.model_registry.ModelVersion:
    """A model version from an alias (`champion`) or a version number (`3`); a clear error otherwise."""
    from mlflow.exceptions import MlflowException

    try:
        if str(ref).isdigit():
            return client().get_model_version(name, str(ref))
        return client().get_model_version_by_alias(name, str(ref))
    except MlflowException as exc:
        store = shown_uri(os.environ.get("MLFLOW_TRACKING_URI") or "") or "the project store"
        raise SslopsError(
            f"model '{name}' has no version or alias '{ref}' in {store}: "
            "run the register stage first (dvc repro register; `dvc repro -f register` if DVC thinks it is up to date, "
            f"e.g. after pointing MLFLOW_TRACKING_URI at another store). ({exc.message})"
        ) from None


def describe_version(name: str, version: str, card: str, model_summary: str) -> None:
    """The model card as the version's description, and a one-paragraph summary as the registered model's."""
    registry = client()
    registry.update_model_version(name, version, description=card)
    registry.update_registered_model(name, description=model_summary)


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def set_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client().set_model_version_tag(name, str(version), key, str(value))


def version_with_sha(name: str, sha256: str, spec_sha256: str) -> mlflow.entities.model_registry.ModelVersion | None:
    """The version of `name` already registered with these exact weights (tag encoder.sha256), if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    # Reused only when everything about it can be checked: pt2 (not a pickle, as before that format) and a
    # recorded encoder.json digest equal to this one. Otherwise the same weights are registered anew.
    matches = [
        v
        for v in versions
        if v.tags.get("encoder.sha256") == sha256
        and v.tags.get("encoder.spec_sha256") == spec_sha256
        and v.tags.get(FORMAT_TAG) == MODEL_FORMAT
    ]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def search_versions(filter_string: str) -> list[mlflow.entities.model_registry.ModelVersion]:
    return list(client().search_model_versions(filter_string))


class EncoderDigests(NamedTuple):
    """sha256 of a registered encoder's files: the weights (always) and encoder.json (versions since it was added)."""

    weights: str
    spec: str | None


@contextlib.contextmanager
def registered_encoder(name: str, ref: str, recorded: dict[str, Any] | None = None) -> Iterator[tuple[Path, Any, Any]]:
    """(folder, model version, digests) of a registered version's plain state_dict files, for the block's duration.

    `ref` is a version number or an alias. The folder holds encoder.pt and encoder.json; rebuild the encoder with
    `sslops.ml.models.load_encoder_dir(folder, digests.weights, digests.spec)`, which checks both files against the
    sha256s register recorded on the version. When `recorded` (the project's own record, metrics/register.json:
    model_name, version, encoder_sha256, encoder_spec_sha256) names this version, the tags must match it too: a tag
    edited together with the files on a shared server is caught by the record in git. No pickle is loaded. Works for
    every version sslops registered, also those logged as pickles before: all carry `state_dict/` in their run.
    """
    import tempfile

    import mlflow

    version = resolve_version(name, ref)
    run_id = version.tags.get("register.run_id")
    digests = EncoderDigests(version.tags.get("encoder.sha256", ""), version.tags.get("encoder.spec_sha256"))
    if not run_id or not digests.weights:
        raise SslopsError(
            f"{name} version {version.version} was not registered by sslops (no register.run_id or encoder.sha256 "
            "tag): its weights cannot be checked, so it is not loaded."
        )
    recorded = recorded or {}
    if recorded.get("model_name") == name and str(recorded.get("version")) == str(version.version):
        for key, tagged in (("encoder_sha256", digests.weights), ("encoder_spec_sha256", digests.spec)):
            if recorded.get(key) and tagged and recorded[key] != tagged:
                raise SslopsError(
                    f"{name} version {version.version} carries {key} {str(tagged)[:12]}... but the project recorded "
                    f"{recorded[key][:12]}... for it (metrics/register.json): the registry and the project disagree."
                )
        # A tag deleted on the server does not switch the check off: the record in git still names the file.
        digests = EncoderDigests(digests.weights, digests.spec or recorded.get("encoder_spec_sha256"))
    with tempfile.TemporaryDirectory(prefix="sslops-encoder-") as tmp:
        folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=STATE_DICT, dst_path=tmp)
        yield Path(folder), version, digests
