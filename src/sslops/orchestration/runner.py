"""Run DVC commands for the flow: one stage at a time, stoppable, with DVC's own verdict on staleness.

Stages run as `dvc repro --single-item <stage>` in a child process (never in-process), so a stage's crash,
memory or Ctrl-C stays in that process and its output can be streamed into the orchestrator's log line by line.
Whether a stage is out of date comes from `dvc status --json`, DVC's machine-readable answer, not from the wording
of `dvc repro`'s log.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sslops.adapters.tracking import PREFECT_RUN_ENV as FLOW_RUN_ENV  # tags every MLflow run
from sslops.config import ROOT_ENV
from sslops.env import TELEMETRY_OFF
from sslops.errors import SslopsError
from sslops.orchestration.pipeline import uncached_outputs
from sslops.pipeline_lock import LOCK_HELD_ENV

PROGRESS_EVERY_S = 30.0  # progress-bar redraws (lines ending in '\r') reach the log at most this often
STOP_GRACE_S = 10.0  # a cancelled stage gets this long to stop on SIGINT before SIGKILL (within Prefect's own grace)
DETAIL_LINES = 25  # lines of a failing stage's own error kept in the failure message

# Lines our CLI prints for a user error (SslopsError, exit 1 or 2): the stage failed for a reason a
# retry cannot fix (bad data, bad params), so the orchestrator must not retry it.
USER_ERROR = re.compile(r"^sslops [\w-]+: error: ")
DVC_ERROR = re.compile(r"^ERROR: ")

# DVC 3.67.1 tells "restored from the run cache" from "ran" only in a log line (dvc/stage/cache.py): `dvc repro`
# has no --json, and the run cache has no public query. So this one verdict still reads DVC's console output; if a
# later DVC words it differently, a restore is reported as "ran" (whether the stage was stale never depends on it).
RESTORED = "Stage '{stage}' is cached - skipping run, checking out outputs"

LineSink = Callable[[str], None]


class StageFailed(SslopsError):
    """A stage (or DVC around it) failed; the message carries the stage's own error text."""

    def __init__(self, stage: str, detail: str, retryable: bool) -> None:
        super().__init__(f"stage '{stage}' failed: {detail}")
        self.stage = stage
        self.retryable = retryable


def stage_env(root: Path, flow_run_id: str | None) -> dict[str, str]:
    """Environment for DVC and the stage commands it starts.

    The flow run id is passed explicitly (Prefect sets it only in processes a runner starts, not when a
    flow is called in-process), so every MLflow stage run is tagged with it. SSLOPS_ROOT pins the stages
    to this project, and this interpreter's bin/ comes first so `python -m sslops` is the same install.
    """
    env = {**TELEMETRY_OFF, **os.environ, ROOT_ENV: str(root), LOCK_HELD_ENV: str(root)}  # callers hold the lock
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if flow_run_id:
        env[FLOW_RUN_ENV] = flow_run_id
    else:
        env.pop(FLOW_RUN_ENV, None)
    return env


# `python -m dvc`, with Ctrl-C handling switched back on first. A process started in the background (`make serve &`,
# nohup, a shell script's `&`) inherits SIGINT as *ignored*, and so would DVC and the stage command it starts:
# a cancelled run would then wait out STOP_GRACE_S and be SIGKILLed instead of stopping cleanly.
_DVC_WITH_SIGINT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'dvc'; runpy.run_module('dvc', run_name='__main__', alter_sys=True)"
)


def _start(root: Path, args: list[str], env: Mapping[str, str], stderr: int) -> subprocess.Popen[bytes]:
    """Start `dvc <args>` in its own process group, so that stopping it reaches the stage command DVC started too."""
    return subprocess.Popen(
        [sys.executable, "-c", _DVC_WITH_SIGINT, *args],
        cwd=root,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=stderr,
        start_new_session=True,
    )


def run_dvc(root: Path, args: list[str], env: Mapping[str, str], on_line: LineSink) -> tuple[int, list[str]]:
    """Run `dvc <args>` in `root`, streaming its merged output to `on_line`; (exit code, last lines).

    Progress bars redraw with '\\r'; those redraws are forwarded at most every PROGRESS_EVERY_S so a long
    stage leaves a readable log rather than thousands of bar states.
    """
    proc = _start(root, args, env, stderr=subprocess.STDOUT)
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


def dvc_json(root: Path, args: list[str], env: Mapping[str, str]) -> tuple[int, Any, list[str]]:
    """Run `dvc <args> --json`; (exit code, its parsed stdout or None on failure, its stderr lines).

    Only stdout is JSON: DVC writes warnings and errors to stderr, which is kept apart for the error message.
    """
    proc = _start(root, [*args, "--json"], env, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate()
    except BaseException:
        _interrupt(proc)
        raise
    errors = err.decode("utf-8", errors="replace").splitlines()
    if proc.returncode != 0:
        return proc.returncode, None, errors
    try:
        return 0, json.loads(out), errors
    except json.JSONDecodeError as exc:
        raise SslopsError(f"`dvc {' '.join(args)} --json` printed no JSON ({exc}): {out[:200]!r}") from None


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
    """Turn a failed `dvc repro` (or `dvc status`) into an error that names the stage's own problem."""
    start = next((i for i, line in enumerate(lines) if USER_ERROR.match(line)), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if DVC_ERROR.match(lines[i])), len(lines))
        detail = "\n".join(lines[start:end][:DETAIL_LINES])
        return StageFailed(stage, detail, retryable=False)
    errors = [line for line in lines if DVC_ERROR.match(line)]
    before = [line for line in lines if not DVC_ERROR.match(line)][-3:]
    detail = "\n".join([*before, *errors]) or f"dvc exited with {code}"
    return StageFailed(stage, detail, retryable=True)


def stage_changes(root: Path, stage: str, env: Mapping[str, str]) -> list[Any]:
    """What DVC finds out of date in `stage` alone (`dvc status --json <stage>`); [] when it is up to date.

    DVC reports an up-to-date stage as `{}` (no entry for it), a stale one as
    `{"<stage>": [{"changed deps": {...}}, {"changed outs": {...}}, "changed command", "always changed"]}`.
    Upstream stages are not checked: the caller runs them first. A failure (e.g. another DVC command holds
    the repository lock) is a retryable StageFailed, like a failed `dvc repro`.
    """
    code, report, errors = dvc_json(root, ["status", stage], env)
    if code != 0:
        raise stage_failure(stage, code, errors)
    return list(report.get(stage) or [])


def describe_changes(changes: list[Any]) -> str:
    """`dvc status --json` entries of one stage as one log line, e.g. `changed deps: params.yaml (x: modified)`."""
    parts = []
    for entry in changes:
        if isinstance(entry, dict):
            for kind, paths in entry.items():
                items = [
                    f"{path} ({state})"
                    if isinstance(state, str)
                    else f"{path} ({', '.join(f'{key}: {how}' for key, how in state.items())})"
                    for path, state in paths.items()
                ]
                parts.append(f"{kind}: {', '.join(items)}")
        else:
            parts.append(str(entry))
    return "; ".join(parts)


def repro_stage(root: Path, stage: str, env: Mapping[str, str], on_line: LineSink) -> str:
    """Bring one stage up to date; returns ran, restored (from DVC's run cache) or skipped (already up to date).

    `dvc status --json` decides first, so an up-to-date stage costs no `dvc repro`; a stale one runs
    `dvc repro --single-item` (upstream stages are the caller's business: it runs them first, in stage_order).
    Raises StageFailed, retryable unless the stage reported a user error.
    """
    changes = stage_changes(root, stage, env)
    if not changes:
        on_line(f"Stage '{stage}' is up to date (dvc status): skipped")
        return "skipped"
    on_line(f"Stage '{stage}' is out of date: {describe_changes(changes)}")
    code, lines = run_dvc(root, ["repro", "--single-item", stage], env, on_line)
    if code != 0:
        raise stage_failure(stage, code, lines)
    return "restored" if RESTORED.format(stage=stage) in lines else "ran"


def save_experiment(root: Path, name: str, message: str, env: Mapping[str, str], on_line: LineSink) -> str:
    """Record the workspace (params, dvc.lock, metrics) as the DVC experiment `name`.

    `dvc exp save` includes git-tracked files only; `dvc exp run` also stages the `cache: false` outputs
    (metrics, plots), so we pass those explicitly to give the saved experiment the same metrics in `dvc exp show`.
    """
    args = ["exp", "save", "--name", name, "--message", message]
    for path in uncached_outputs(root):
        args += ["--include-untracked", path]
    code, lines = run_dvc(root, args, env, on_line)
    if code != 0:
        raise SslopsError("`dvc exp save` failed: " + "\n".join(lines[-5:]))
    return name
