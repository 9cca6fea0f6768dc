"""Drive the DVC pipeline from an orchestrator, stage by stage, without importing one.

The Prefect flow in flows/ is a thin shell over these functions, so the logic that matters (stage order,
staleness, overrides, locking, the run summary) is plain Python that tests can call without a Prefect
server, and nothing under src/sslops imports Prefect: the `dvc repro` path never pays for it.

- The stage order is DVC's own DAG (`dvc dag --dot`), never a second copy of it.
- Each stage runs as `dvc repro --single-item <stage>`, so DVC alone decides whether it is stale.
- Overrides are applied to params.yaml with DVC's own `-S` parser (the one `dvc exp run -S` uses); after
  the stages, `dvc exp save` records the workspace as one DVC experiment, and params.yaml is restored so
  a later scheduled run never inherits an ad-hoc override.
- One pipeline run at a time per project: an exclusive lock that a second run waits for, up to a limit.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslops.cli import TELEMETRY_OFF
from sslops.config import ROOT_ENV, Project, flatten
from sslops.errors import SslopsError
from sslops.tracking import PREFECT_RUN_ENV as FLOW_RUN_ENV  # tags every MLflow run

FLOW_SECTION = "flow"
LOCK_PATH = Path(".dvc") / "tmp" / "sslops-pipeline.lock"  # .dvc/tmp is DVC's own git-ignored scratch
BACKUP_DIR = Path(".dvc") / "tmp" / "sslops-params-backup"
PROGRESS_EVERY_S = 30.0  # progress-bar redraws (lines ending in '\r') reach the log at most this often
STOP_GRACE_S = 10.0  # a cancelled stage gets this long to stop on SIGINT before SIGKILL (within Prefect's own grace)
DETAIL_LINES = 25  # lines of a failing stage's own error kept in the failure message

# Lines our CLI prints for a user error (SslopsError, exit 1 or 2): the stage failed for a reason a
# retry cannot fix (bad data, bad params), so the orchestrator must not retry it.
USER_ERROR = re.compile(r"^sslops [\w-]+: error: ")
DVC_ERROR = re.compile(r"^ERROR: ")

LineSink = Callable[[str], None]


class StageFailed(SslopsError):
    """A stage (or DVC around it) failed; the message carries the stage's own error text."""

    def __init__(self, stage: str, detail: str, retryable: bool) -> None:
        super().__init__(f"stage '{stage}' failed: {detail}")
        self.stage = stage
        self.retryable = retryable


class PipelineBusy(SslopsError):
    """Another pipeline run held the project lock for longer than the configured wait."""


@dataclass(frozen=True)
class FlowConfig:
    """The `flow:` section of params.yaml: schedule, retries and lock wait of the Prefect deployment."""

    cron: str
    timezone: str
    retries: int
    retry_delay_s: float
    lock_timeout_s: float
    mlflow_ui: str

    @classmethod
    def from_project(cls, project: Project) -> FlowConfig:
        section = project.section(FLOW_SECTION)
        try:
            return cls(
                cron=str(section["cron"]),
                timezone=str(section["timezone"]),
                retries=int(section["retries"]),
                retry_delay_s=float(section["retry_delay_s"]),
                lock_timeout_s=float(section["lock_timeout_s"]),
                mlflow_ui=str(section["mlflow_ui"]).rstrip("/"),
            )
        except KeyError as exc:
            raise SslopsError(f"{project.params_file}: '{FLOW_SECTION}:' needs the key {exc}.") from None
        except (TypeError, ValueError) as exc:
            raise SslopsError(f"{project.params_file}: a value in '{FLOW_SECTION}:' has the wrong type: {exc}") from None


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in a run: ran, restored (DVC run-cache), skipped, failed or not run."""

    stage: str
    status: str
    seconds: float


def stage_env(root: Path, flow_run_id: str | None) -> dict[str, str]:
    """Environment for DVC and the stage commands it starts.

    The flow run id is passed explicitly (Prefect sets it only in processes a runner starts, not when a
    flow is called in-process), so every MLflow stage run is tagged with it. SSLOPS_ROOT pins the stages
    to this project, and this interpreter's bin/ comes first so `python -m sslops` is the same install.
    """
    env = {**TELEMETRY_OFF, **os.environ, ROOT_ENV: str(root)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if flow_run_id:
        env[FLOW_RUN_ENV] = flow_run_id
    else:
        env.pop(FLOW_RUN_ENV, None)
    return env


# `python -m dvc`, with Ctrl-C handling switched back on first. A process started in the background (`make serve &`,
# nohup, a shell script's `&`) inherits SIGINT as *ignored*, and so would DVC and the stage command it starts:
# a cancelled run would then wait out STOP_GRACE_S and be SIGKILLed instead of stopping cleanly.
_DVC_WITH_SIGINT = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                    "sys.argv[0] = 'dvc'; runpy.run_module('dvc', run_name='__main__', alter_sys=True)")


def run_dvc(root: Path, args: list[str], env: Mapping[str, str], on_line: LineSink) -> tuple[int, list[str]]:
    """Run `dvc <args>` in `root`, streaming its merged output to `on_line`; (exit code, last lines).

    Progress bars redraw with '\\r'; those redraws are forwarded at most every PROGRESS_EVERY_S so a long
    stage leaves a readable log rather than thousands of bar states.
    """
    # Its own process group, so that stopping it reaches the stage command DVC started too.
    proc = subprocess.Popen([sys.executable, "-c", _DVC_WITH_SIGINT, *args], cwd=root, env=dict(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    tail: deque[str] = deque(maxlen=200)
    last_progress = 0.0
    assert proc.stdout is not None
    try:
        # newline="": split on '\n' and on '\r' alone, and keep the ending to tell redraws from lines.
        with io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline="") as out:
            for raw in out:
                line = raw.rstrip("\r\n")
                if not line.strip():
                    continue
                if raw.endswith("\r"):
                    now = time.monotonic()
                    if now - last_progress < PROGRESS_EVERY_S:
                        continue
                    last_progress = now
                tail.append(line)
                on_line(line)
    except BaseException:
        _interrupt(proc)
        raise
    return proc.wait(), list(tail)


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """Stop DVC and its stage as Ctrl-C would, so a cancelled flow run leaves no stage running.

    SIGINT lets DVC release its locks and the stage leave its outputs as they were (they are written
    atomically); whatever still runs after STOP_GRACE_S is killed.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stage_failure(stage: str, code: int, lines: list[str]) -> StageFailed:
    """Turn a failed `dvc repro` into an error that names the stage's own problem."""
    start = next((i for i, line in enumerate(lines) if USER_ERROR.match(line)), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if DVC_ERROR.match(lines[i])), len(lines))
        detail = "\n".join(lines[start:end][:DETAIL_LINES])
        return StageFailed(stage, detail, retryable=False)
    errors = [line for line in lines if DVC_ERROR.match(line)]
    before = [line for line in lines if not DVC_ERROR.match(line)][-3:]
    detail = "\n".join([*before, *errors]) or f"dvc exited with {code}"
    return StageFailed(stage, detail, retryable=True)


def stage_order(root: Path, env: Mapping[str, str]) -> list[str]:
    """The pipeline's stages in an order DVC would run them, read from DVC's DAG (`dvc dag --dot`).

    `.dvc` files (tracked data) are inputs, not stages to run. Ties keep the order DVC lists them in,
    which follows dvc.yaml.
    """
    code, lines = run_dvc(root, ["dag", "--dot"], env, on_line=lambda _: None)
    if code != 0:
        raise SslopsError(f"`dvc dag` failed in {root}: " + "\n".join(lines[-5:]))
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    for line in lines:
        if m := re.fullmatch(r'\s*"(.+)"\s*->\s*"(.+)";', line):
            edges.append((m[1], m[2]))
        elif m := re.fullmatch(r'\s*"(.+)";', line):
            nodes.append(m[1])
    stages = [n for n in nodes if not n.endswith(".dvc")]
    upstream = {s: {a for a, b in edges if b == s and a in stages} for s in stages}
    order: list[str] = []
    while len(order) < len(stages):
        ready = [s for s in stages if s not in order and upstream[s] <= set(order)]
        if not ready:
            raise SslopsError(f"`dvc dag` in {root} returned a cycle among {sorted(set(stages) - set(order))}")
        order.append(ready[0])
    return order


def repro_stage(root: Path, stage: str, env: Mapping[str, str], on_line: LineSink) -> str:
    """Bring one stage up to date with `dvc repro --single-item`; returns ran, restored or skipped.

    Upstream stages are the caller's business (it runs them first, in stage_order), so DVC checks this
    stage alone. Raises StageFailed, retryable unless the stage reported a user error.
    """
    code, lines = run_dvc(root, ["repro", "--single-item", stage], env, on_line)
    if code != 0:
        raise stage_failure(stage, code, lines)
    text = "\n".join(lines)
    if f"Running stage '{stage}'" in text:
        return "ran"
    if f"Stage '{stage}' is cached" in text:
        return "restored"
    return "skipped"


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """`{"pretrain.epochs": 50}` as `dvc exp run -S` arguments; values keep their JSON types.

    Nested mappings become dotted keys, because DVC's override grammar has no JSON objects.
    """
    return [f"{key}={json.dumps(value)}" for key, value in flatten(dict(overrides)).items()]


def _apply(root: Path, overrides: Mapping[str, Any]) -> None:
    """Apply overrides with DVC's `-S` machinery (Hydra grammar, comments in params.yaml kept)."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    by_file = to_path_overrides(override_args(overrides))
    for name, args in by_file.items():
        try:
            apply_overrides(root / name, args)
        except InvalidArgumentError as exc:
            cause = f": {exc.__cause__}" if exc.__cause__ else ""
            raise SslopsError(f"cannot apply overrides {args} to {name}{cause}") from None


@contextlib.contextmanager
def overridden_params(root: Path, overrides: Mapping[str, Any], warn: LineSink) -> Iterator[None]:
    """params.yaml with `overrides` applied for the duration of the block, then restored byte for byte.

    The originals are also copied to .dvc/tmp, so a run killed mid-way is undone by the next run
    (which holds the project lock, so no other run can be using them).
    """
    backup = root / BACKUP_DIR
    _restore(root, backup, warn)
    if not overrides:
        yield
        return
    from dvc.utils.cli_parse import to_path_overrides

    for name in to_path_overrides(override_args(overrides)):
        (backup / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, backup / name)
    try:
        _apply(root, overrides)
        yield
    finally:
        _restore(root, backup)


def _restore(root: Path, backup: Path, warn: LineSink | None = None) -> None:
    """Copy every backed-up params file back into the project and drop the backup."""
    if not backup.is_dir():
        return
    for saved in (p for p in backup.rglob("*") if p.is_file()):
        name = saved.relative_to(backup)
        if warn:
            warn(f"restoring {name}, left overridden by an interrupted run")
        shutil.copyfile(saved, root / name)
    shutil.rmtree(backup)


def uncached_outputs(root: Path) -> list[str]:
    """Stage outputs declared with `cache: false` (metrics, plots) that exist now.

    `dvc exp save` includes git-tracked files only; `dvc exp run` also stages these, so we pass them
    explicitly to give the saved experiment the same metrics in `dvc exp show`.
    """
    import yaml

    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages") or {}
    paths = []
    for spec in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for out in spec.get(kind) or []:
                if isinstance(out, dict):
                    path, opts = next(iter(out.items()))
                    if (opts or {}).get("cache") is False and (root / path).exists():
                        paths.append(path)
    return paths


def save_experiment(root: Path, name: str, message: str, env: Mapping[str, str], on_line: LineSink) -> str:
    """Record the workspace (params, dvc.lock, metrics) as the DVC experiment `name`."""
    args = ["exp", "save", "--name", name, "--message", message]
    for path in uncached_outputs(root):
        args += ["--include-untracked", path]
    code, lines = run_dvc(root, args, env, on_line)
    if code != 0:
        raise SslopsError("`dvc exp save` failed: " + "\n".join(lines[-5:]))
    return name


@contextlib.contextmanager
def project_lock(root: Path, timeout_s: float, holder: str, on_wait: LineSink) -> Iterator[None]:
    """Hold the project's pipeline lock; wait up to `timeout_s` for a run that holds it, then fail.

    An OS file lock (flock), so it is released when its holder exits, even after kill -9; the file
    names the holder for the error message. `timeout_s=0` fails at once.
    """
    path = root / LOCK_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        waiting = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fh.seek(0)
                other = fh.read().strip() or "an unknown process"
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PipelineBusy(
                        f"another pipeline run holds {path} ({other}); waited {timeout_s:g} s "
                        f"(flow.lock_timeout_s in params.yaml) and gave up without touching the workspace."
                    ) from None
                if not waiting:
                    on_wait(f"waiting up to {timeout_s:g} s for the pipeline lock held by {other}")
                    waiting = True
                time.sleep(min(1.0, left))
        fh.truncate(0)
        fh.write(f"{holder}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_metrics(root: Path, order: list[str]) -> list[dict[str, Any]]:
    """Numeric and boolean values of every metrics/*.json, as rows (stage, metric, value), in stage order."""
    files = sorted((root / "metrics").glob("*.json"),
                   key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.stem))
    rows = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            for key, value in flatten(data).items():
                if isinstance(value, (int, float, bool)):
                    rows.append({"stage": path.stem, "metric": key, "value": value})
    return rows


def registered_model(root: Path) -> dict[str, Any] | None:
    """The register stage's record (model name, version, promotion), when the pipeline has one."""
    try:
        data = json.loads((root / "metrics" / "register.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def mlflow_runs(project: Project, flow_run_id: str, ui_base: str) -> list[dict[str, str]]:
    """The MLflow stage runs a flow run started (tag `prefect.flow_run_id`), oldest first, with UI links."""
    from sslops import tracking

    return [{"stage": r.info.run_name, "run_id": r.info.run_id, "status": r.info.status,
             "url": f"{ui_base}/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}"}
            for r in tracking.stage_runs_tagged(project, "prefect.flow_run_id", flow_run_id)]


def summary_markdown(title: str, outcomes: list[StageOutcome], overrides: Mapping[str, Any],
                     experiment: str | None, model: dict[str, Any] | None, metrics: list[dict[str, Any]],
                     runs: list[dict[str, str]]) -> str:
    """The run summary a person reads in the Prefect UI: what ran, how long, what it produced, where to look."""
    lines = [f"# {title}", ""]
    if overrides:
        shown = ", ".join(f"`{a}`" for a in override_args(overrides))
        saved = f"DVC experiment `{experiment}` (`dvc exp show`)" if experiment else "no DVC experiment saved"
        lines.append(f"Overrides: {shown} → {saved}.")
    else:
        lines.append("No overrides: a plain `dvc repro` of the workspace.")
    lines += ["", "## Stages", "", "| stage | result | seconds |", "|---|---|---:|"]
    lines += [f"| {o.stage} | {o.status} | {o.seconds:.1f} |" for o in outcomes]
    if model:
        promoted = "promoted to champion" if model.get("promoted") else f"not promoted (champion: version {model.get('champion_version')})"
        reason = f": {model['reason']}" if model.get("reason") else ""
        lines += ["", "## Model", "", (f"`{model.get('model_name')}` version **{model.get('version')}** "
                                       f"(MLflow run `{model.get('run_id')}`), {promoted}{reason}.")]
    if metrics:
        lines += ["", "## Metrics (workspace after the run)", "", "| stage | metric | value |", "|---|---|---:|"]
        lines += [f"| {m['stage']} | {m['metric']} | {m['value']:.4g} |" if isinstance(m["value"], float)
                  else f"| {m['stage']} | {m['metric']} | {m['value']} |" for m in metrics]
    lines += ["", "## MLflow runs started by this flow run", ""]
    if runs:
        lines += ["| stage | run id | status |", "|---|---|---|"]
        lines += [f"| {r['stage']} | [{r['run_id']}]({r['url']}) | {r['status']} |" for r in runs]
    else:
        lines.append("None: every stage was up to date or none got that far.")
    return "\n".join(lines) + "\n"
