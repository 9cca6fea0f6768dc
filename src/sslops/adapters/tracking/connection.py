"""MLflow connection: the tracking URI (the project's SQLite store unless MLFLOW_TRACKING_URI names a server),
the experiment, a bounded reachability check, and failures translated into errors that name the server."""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING

from sslops.config import Project
from sslops.errors import ServiceUnavailable, SslopsError

if TYPE_CHECKING:
    import mlflow


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


def connect(project: Project, create: bool = True) -> str:
    """Point MLflow at the project's store; returns the experiment id.

    A tracking server is checked first, with the bounded timeout and retries of params.yaml `tracking:` (MLflow's
    own defaults retry for minutes), so a stage fails in seconds with one line naming the URI instead of
    starting work it cannot record. Variables already set in the environment win over params.yaml. A command that
    only reads (`create` False) refuses a project's own store that does not exist yet instead of creating it.
    """
    import mlflow

    uri = tracking_uri(project)
    server = uri.startswith(("http://", "https://"))
    if server:
        cfg = project.config("tracking")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(math.ceil(cfg.http_timeout_s)))  # whole seconds
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.http_retries))
        _check_reachable(uri, cfg.http_timeout_s)
    elif not create and uri == default_uri(project) and not (project.root / "mlflow" / "mlflow.db").is_file():
        raise SslopsError(
            f"{project.root / 'mlflow' / 'mlflow.db'}: no MLflow store yet, so nothing is registered or tracked in "
            "this project; run the pipeline first (make run or sslops repro)"
        )
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


def client() -> mlflow.MlflowClient:
    import mlflow

    return mlflow.MlflowClient()
