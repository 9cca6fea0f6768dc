"""The DVC experiment queue as the benchmark scripts use it: queue runs, run them one at a time, read them back.

Queued experiments run in DVC's temporary workspaces, so MLFLOW_TRACKING_URI is pointed at this project's store to
keep their runs and model versions (unless the caller already points it at a server).

DVC keeps a finished experiment as git refs (`refs/exps/...`) of the clone that ran it, and a fresh clone has none:
the runs of a sweep longer than one machine's life would be lost with it (they were, once: 24 runs of
bench/compare_methods.py, 2026-11-30). So every finished experiment a script reads is also written to its results
file under bench/results/ (`record=`, one JSON line per run: the params sections and metrics files the tables read,
the commit it was queued from, the machine, the date), and the tables are built from the live experiments and that
record together; a committed record is what lets a sweep be finished in another session and regenerated anywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sslops.commands.report import replace_section
from sslops.ml.device import cpu_model

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
    orphaned(dvc("queue", "status"))
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


def orphaned(status: str) -> None:
    """Stop when `dvc queue status` lists a run as Running while no worker is active: its worker died with the
    session or machine that ran it, DVC still shows it running, and the wait above would never end (this cost a
    sweep an hour here)."""
    running = re.findall(r"^\w+\s+(\S+).*\bRunning\b", status, re.M)
    if running and re.search(r"Worker status: 0 active", status):
        raise SystemExit(
            f"{', '.join(running)}: listed as running, but no queue worker is active (its worker died). Remove it "
            "with `dvc queue kill NAME; dvc queue remove NAME`, then run this again."
        )


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


def experiments(pattern: str, record: Record | None = None) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Experiments whose name matches `pattern` (newest first wins): name -> {"data": ..., "baseline": commit} or
    {"state": ...} while queued or running; and the revisions `dvc exp show` lists (workspace, HEAD, ...), for a
    committed baseline. With `record`, the finished ones are recorded first and the recorded runs that no live
    experiment has are listed too, each under the commit it was queued from."""
    shown = json.loads(dvc("exp", "show", "--json", "-A"))  # every baseline: commits made since still see them
    if record is not None:
        shown = record.merge(shown, pattern)
    found: dict[str, dict[str, Any]] = {}
    for commit in shown:
        for name, entry in _named(commit, pattern):
            found.setdefault(name, entry)
    return found, shown


def _named(commit: dict[str, Any], pattern: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, {"data", "baseline"} or {"state"}) of the experiments of one `dvc exp show` commit matching `pattern`,
    failed ones left out."""
    out = []
    for exp in commit.get("experiments") or []:
        state = (exp.get("executor") or {}).get("state")
        for rev in exp.get("revs") or []:
            name = rev.get("name") or ""
            if not re.fullmatch(pattern, name) or rev.get("error"):
                continue
            if state not in (None, "success"):  # queued or running: its files are still the baseline's
                out.append((name, {"state": state}))
            else:
                out.append((name, {"data": rev.get("data") or {}, "baseline": commit.get("rev")}))
    return out


class Record:
    """A sweep's results file: one JSON line per finished experiment, the newest line of a name winning.

    Only `params` (sections of params.yaml) and `metrics` (files) are kept: what the tables read, not DVC's hashes
    of every dependency."""

    def __init__(self, path: Path, params: tuple[str, ...], metrics: tuple[str, ...]) -> None:
        self.path, self.params, self.metrics = path, params, metrics

    def runs(self) -> dict[str, dict[str, Any]]:
        """name -> its newest recorded line; a line that is not a JSON object names the file and line."""
        out: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return out
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                run = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"{self.path}:{number} is not a JSON line ({err})") from err
            fields = {"name": str, "baseline": str, "params": dict, "metrics": dict}
            if not isinstance(run, dict) or not all(isinstance(run.get(k), t) for k, t in fields.items()):
                raise SystemExit(
                    f"{self.path}:{number} is not a recorded run (an object with a name, a baseline commit, params "
                    "and metrics)"
                )
            out[run["name"]] = run
        return out

    def _line(self, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        data = entry["data"]
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        return {
            "name": name,
            "ran": data.get("timestamp"),  # when the experiment's commit was made; `date` says when it was recorded
            "baseline": entry["baseline"],
            "params": {k: params[k] for k in self.params if k in params},
            "metrics": {path: metrics_of(data, path) for path in self.metrics},
        }

    def merge(self, shown: list[dict[str, Any]], pattern: str) -> list[dict[str, Any]]:
        """Append the finished experiments of `shown` matching `pattern` that the file lacks (or holds with other
        figures: a re-run); return `shown` with every recorded run no live experiment has, as a finished experiment
        of its baseline commit (a commit this clone lacks gets an entry of its own, with no committed figures)."""
        recorded = self.runs()
        live: set[str] = set()
        new = []
        for commit in shown:
            for name, entry in _named(commit, pattern):
                if name in live:  # an older run of the name: commits come newest first
                    continue
                live.add(name)
                if "data" not in entry:  # queued or running
                    continue
                line = self._line(name, entry)
                old = recorded.get(name, {})
                if {k: old.get(k) for k in line} != line:
                    new.append((name, line | {"machine": cpu_model(), "date": time.strftime("%F")}))
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.writelines(json.dumps(line, sort_keys=True) + "\n" for _, line in new)
        merged = [dict(c, experiments=list(c.get("experiments") or [])) for c in shown]
        by_rev = {c.get("rev"): c for c in merged}
        for name, run in self.runs().items():
            if name in live or not re.fullmatch(pattern, name):
                continue
            commit = by_rev.get(run["baseline"])
            if commit is None:
                commit = by_rev[run["baseline"]] = {"rev": run["baseline"], "data": {}, "experiments": []}
                merged.append(commit)
            data = {
                "params": {"params.yaml": {"data": run["params"]}},
                "metrics": {path: {"data": m} for path, m in run["metrics"].items()},
            }
            commit["experiments"].append({"executor": None, "revs": [{"name": name, "data": data}]})
        return merged


# A generated section to write: (document, begin marker, end marker, new text, the row keys of a section's text).
Table = tuple[Path, str, str, str, Callable[[str], set[Any]]]


def write_tables(tables: list[Table], force: bool) -> None:
    """Replace generated sections of documents with new text, unless that would drop rows a section holds now: a
    clone without the experiments that made them (and without their record) would otherwise erase measured results.
    All are checked before any is written, so a refusal leaves every document as it was; `force` writes anyway."""
    lost = []
    for doc, begin, end, text, rows in tables:
        content = doc.read_text()
        start, stop = content.find(begin), content.find(end)
        gone = rows(content[start + len(begin) : stop]) - rows(text) if 0 <= start < stop else set()
        lost += [f"{doc}: {', '.join(map(str, sorted(gone)))}"] if gone else []
    if lost and not force:
        raise SystemExit(
            "nothing written: the tables would lose rows that neither a live experiment nor the results file under "
            "bench/results/ holds:\n  "
            + "\n  ".join(lost)
            + "\nRun them again (`--run`), or pass --force to drop them."
        )
    for doc, begin, end, text, _ in tables:
        replace_section(doc, begin, end, text)
