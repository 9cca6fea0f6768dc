"""The DVC experiment queue as the benchmark scripts use it: queue runs, run them one at a time, read them back.

Queued experiments run in DVC's temporary workspaces, so MLFLOW_TRACKING_URI is pointed at this project's store to
keep their runs and model versions (unless the caller already points it at a server).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def dvc(*args: str) -> str:
    """`dvc ARGS` in the project; its stdout, or exit with its output when it fails."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow' / 'mlflow.db'}",
    }
    out = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def run_queue(experiments: dict[str, list[str]]) -> float:
    """Queue one `dvc exp run` per name (its extra arguments: targets, -S overrides), run the queue with one worker
    (a worker already running, another script's, takes these too), wait until nothing is queued or running; returns
    the seconds it took. Run one such script at a time: two polling at once could start two workers, and a worker's
    torch threads already use every core (two 2-thread workers on 2 cores made finetune stages several times
    slower here, 2026-11-29)."""
    started = time.perf_counter()
    for name, args in experiments.items():
        dvc("exp", "run", "--queue", "-f", "-n", name, *args)
    while True:
        status = dvc("queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        if not re.search(r"\bRunning\b", status):  # none started yet, or a worker stopped with runs still queued
            dvc("queue", "start", "-j", "1")  # (seen with DVC 3); one worker, so the runs never share the CPU
        time.sleep(60)
    print(status)
    if re.search(r"\bFailed\b", status):
        print("some experiments failed: `dvc queue logs <name>` shows why", file=sys.stderr)
    return time.perf_counter() - started


def metrics_of(data: dict[str, Any], path: str) -> dict[str, Any]:
    """The contents of metrics file `path` in one revision of `dvc exp show --json`."""
    return ((data.get("metrics") or {}).get(path) or {}).get("data") or {}


def budget_labels(evaluate: dict[str, Any]) -> dict[str, int]:
    """Budget key (`frac_0.01`) -> its number of labels, from an evaluate.json's `headline.<budget>.labels`."""
    return {
        k.removeprefix("headline.").removesuffix(".labels"): v
        for k, v in evaluate.items()
        if k.startswith("headline.") and k.endswith(".labels")
    }


def experiments(pattern: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Experiments whose name matches `pattern` (newest first wins): name -> {"data": ...} or {"state": ...} while
    queued or running; and the revisions `dvc exp show` lists (workspace, HEAD, ...), for a committed baseline."""
    found: dict[str, dict[str, Any]] = {}
    shown = json.loads(dvc("exp", "show", "--json", "-A"))  # every baseline: commits made since still see them
    for commit in shown:
        for exp in commit.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            for rev in exp.get("revs") or []:
                name = rev.get("name") or ""
                if not re.fullmatch(pattern, name) or rev.get("error"):
                    continue
                if state not in (None, "success"):  # queued or running: its files are still the baseline's
                    found.setdefault(name, {"state": state})
                else:
                    found.setdefault(name, {"data": rev.get("data") or {}})
    return found, shown
