"""`sslops search-recipes --task NAME`: score fine-tuning recipes on a task's held-out labels.

For each init (pretrained, scratch), label budget and draw of the task, every trial (`--trials`, default all of
`finetune.trials`) is fine-tuned on part of the labelled subset and scored on the held-out rest
(`finetune.search.holdout`), beside a linear probe fitted on the same part: the search that a task without
committed choices runs in its own finetune stage (the same code, `Fit.search_subsets`), here for any task and any
trials, so that bench/finetune_search.py can choose and commit `finetune.chosen` and `finetune.headline`. The test
split is never read, and nothing the evaluate stage scores is written: the finetune stage's outputs stay as they
are. One MLflow run (`search/NAME`) with a child run per model.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from sslops.adapters import tracking
from sslops.config import Project
from sslops.data.store import ImageStore
from sslops.errors import SslopsError
from sslops.ml.results import mean, spread
from sslops.stages.finetune import Fit, load_encoders

SEARCHED = ("pretrained", "scratch")  # raw pixels are not fine-tuned


def search_recipes(project: Project, task: str, trials: list[str] | None = None) -> dict[str, Any]:
    """The held-out scores of each trial on `task` (`scores`: trial -> `holdout.<acc|linear_acc>[_std].<budget>.
    <init>`, the mean and spread over the label draws, and `seconds` of its fine-tuning), the encoder they were
    measured on, the machine and the precision."""
    from sslops.ml.device import Precision, machine, pick_device
    from sslops.ml.transfer import features

    cfg, outputs = project.config("finetune"), project.outputs(task)  # an unknown task: an error naming the tasks
    budgets = project.config("tasks")[task].budgets
    names = trials or list(cfg.trials)
    unknown = [t for t in names if t not in cfg.trials]
    if unknown:
        raise SslopsError(f"--trials names {', '.join(unknown)}, not in finetune.trials ({', '.join(cfg.trials)})")
    device = pick_device(cfg.device)
    precision = Precision.resolve(cfg.amp, cfg.channels_last, device)
    store = ImageStore.open(outputs.prepared)
    rows, labels = store.labelled("train")
    params = {**cfg.record(), "budgets": budgets, "trials": names}
    with tracking.stage_run(project, "search", params, task=task) as run, tempfile.TemporaryDirectory() as tmp:
        encoders, version, digests, tags = load_encoders(project, cfg, task, store)
        print(f"searching {', '.join(names)} for task {task} on {cfg.search.holdout:.0%} held-out labels per subset")
        fit = Fit(Path(tmp), cfg, task, store, budgets, tags, device, precision)
        started, entries = time.perf_counter(), []
        for init in SEARCHED:
            encoder = encoders[init].to(device)
            train = (rows, labels, features(encoder, store.take(rows), device))
            entries += fit.search_subsets(train, init, encoder, names)
        tracking.log_metrics({"seconds": time.perf_counter() - started})
        run_id = run.info.run_id
    return {
        "task": task,
        "model": {"name": project.model_name, "version": int(version.version), "encoder_sha256": digests.weights},
        "holdout": cfg.search.holdout,
        "scores": {trial: holdout_scores(entries, trial) for trial in names},
        "machine": machine(device),
        "amp": precision.amp,
        "run_id": run_id,
    }


def holdout_scores(entries: list[dict[str, Any]], trial: str) -> dict[str, float]:
    """One trial's scores from the search's entries: its fine-tuning's held-out accuracy and the linear probe's (the
    same for every trial: what fine-tuning must beat to stand in the headline), mean and spread over the draws."""
    found: dict[str, list[float]] = {}
    seconds = 0.0
    for e in entries:
        if e["protocol"] == "finetune" and e["trial"] != trial:
            continue
        metric = "acc" if e["protocol"] == "finetune" else f"{e['protocol']}_acc"
        found.setdefault(f"{metric}.{e['budget']}.{e['init']}", []).append(e["holdout_acc"])
        seconds += e.get("seconds", 0.0)
    out: dict[str, float] = {}
    for key, accs in found.items():
        metric, rest = key.split(".", 1)
        out[f"holdout.{metric}.{rest}"] = round(mean(accs), 5)
        out[f"holdout.{metric}_std.{rest}"] = round(spread(accs), 5)
    return out | {"seconds": round(seconds, 3)}  # a tiny search takes milliseconds, which 0.1 s rounds to 0
