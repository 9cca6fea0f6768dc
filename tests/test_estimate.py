"""`sslops estimate` / `sslops repro`'s cost estimate: the work it counts from params.yaml and the last run's data
sizes, and the rates it measures on this machine."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO, TASK
from sslops.commands.estimate import (
    FIXED_S,
    _calibrate,
    _finetune,
    _pretrain,
    _Rates,
    estimate,
    format_actuals,
    format_estimate,
)
from sslops.config import Project
from sslops.ml.device import Precision

RATES = _Rates(
    pretrain_step=1.0, finetune_step={64: 1.0, 128: 2.0}, forward_image=0.0, probe_label_fit=1e-4, knn_pair=0.0
)


def _write(path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_the_default_runs_fine_tuning_work_is_counted_model_by_model(tmp_path, monkeypatch):
    """Hand count of the committed params.yaml: digits has 10/class and 50/class (3 draws each) and 100 % (one
    subset), both inits, each at its chosen trial: 2 x (3 x 120 + 3 x 960 + 1,000) = 8,480 steps, all at batch 64.
    Fashion-MNIST: 13 models reach the 1,000-step cap at batch 64, and the pretrained 100 % LP-FT one at batch 128."""
    project = Project(REPO)
    fits = 1 + 0.8 * 3  # each probe: three penalties on 80 % of its labels, then the chosen one on all
    digits = {"images_train": 1297, "images_test": 500, "classes": 10}
    seconds, work = _finetune(project, "digits", digits, RATES)
    assert work == "14 models, 8,480 steps"
    probes = 3 * (3 * 100 + 3 * 500 + 1297) * fits * 1e-4  # three inits' probes on every labelled subset
    assert seconds == pytest.approx(8480 * 1.0 + probes)
    fashion = {"images_train": 60000, "images_test": 10000, "classes": 10}
    seconds, work = _finetune(project, "fashion-mnist", fashion, RATES)
    assert work == "14 models, 14,000 steps"
    probes = 3 * (3 * 600 + 3 * 6000 + 60000) * fits * 1e-4
    assert seconds == pytest.approx(13 * 1000 * 1.0 + 1000 * 2.0 + probes)


def test_pretraining_work_follows_the_budget_in_images(project):
    """60,000 images at batch 256: 234 steps an epoch, 10 epochs for 600,000 images, as the stage schedules them."""
    from conftest import set_param

    set_param(project.root, "pretrain", "images", 600_000)
    set_param(project.root, "pretrain", "batch_size", 256)
    project = Project(project.root)
    _write(project.metrics_dir / "augment.json", {"images": 60000})
    _write(project.metrics_dir / "prepare.json", {"images_train": 60000, "images_unlabeled": 0, "shape": [28, 28, 1]})
    seconds, work = _pretrain(project, RATES)
    assert work == "2,340 steps of 1.000 s"
    last_bank = 60000 - round(0.1 * 60000)  # the final linear probe fits every train image but the monitor's queries
    assert project.config("pretrain").val_fraction == 0.1
    assert seconds == pytest.approx(2340 * 1.0 + last_bank * RATES.probe_label_fit)  # no forward or kNN cost here


def test_every_stage_is_estimated_from_rates_measured_here(project):
    """With the last run's sizes recorded (its metrics), every stage gets minutes; the measured rates are this
    machine's (positive, and the fine-tuning step at each batch size the recipes use)."""
    metrics = project.metrics_dir
    _write(metrics / "prepare.json", {"images_train": 80, "images_unlabeled": 0, "shape": [12, 12, 1]})
    _write(metrics / "augment.json", {"images": 80})
    _write(metrics / "tasks" / TASK / "prepare.json", {"images_train": 80, "images_test": 40, "classes": 4})
    stages = ["prepare", "augment", "pretrain", f"finetune@{TASK}", f"evaluate@{TASK}"]
    est = estimate(project, stages)
    assert [s.stage for s in est.stages] == stages and est.calibration_s > 0
    cpu, cfg = torch.device("cpu"), project.config("finetune")
    rates = _calibrate(project, (12, 12, 1), cpu, (Precision.resolve(cfg.amp, cfg.channels_last, cpu), cpu))
    assert set(rates.finetune_step) == {cfg.recipe.batch_size} | {t.batch_size for t in cfg.trials.values()}
    assert all(v > 0 for v in [rates.pretrain_step, *rates.finetune_step.values(), rates.forward_image])
    assert rates.probe_label_fit > 0 and rates.knn_pair > 0
    assert all(s.seconds is not None and s.seconds > FIXED_S[s.stage.partition("@")[0]] for s in est.stages[1:])
    assert est.total == pytest.approx(sum(est.seconds().values()), abs=0.5)
    table = format_estimate(est)
    assert all(stage in table for stage in stages) and "total" in table and est.machine in table
    after = format_actuals(est, {"prepare": 12.0, f"finetune@{TASK}": 30.0})
    row = next(line for line in after.splitlines() if f"finetune@{TASK}" in line)
    assert f"{est.seconds()[f'finetune@{TASK}'] / 60:5.1f} min" in row and row.endswith("  0.5 min")


def test_a_stage_whose_data_was_never_prepared_has_no_estimate(project):
    """A fresh project (no metrics yet): the sizes are unknown, so the data stages say so instead of guessing."""
    est = estimate(project, ["prepare", "pretrain", f"finetune@{TASK}"])
    assert est.stages[0].seconds == FIXED_S["prepare"]
    assert [s.seconds for s in est.stages[1:]] == [None, None]
    assert "unknown until prepare has run once" in format_estimate(est)
    assert "+ 2 unknown" in format_estimate(est)
    assert format_estimate(estimate(project, [])).endswith("nothing to run.")


def test_the_json_estimate_gives_scripts_the_total_and_what_is_unknown(project, monkeypatch, capsys):
    """`sslops estimate --all --json` is what CI reads to decide whether `make run` fits its time: every stage, the
    total in seconds, and the stages it could not estimate (so a script never mistakes unknown for free)."""
    from sslops import cli

    stages = ["prepare", "pretrain", f"finetune@{TASK}"]
    monkeypatch.setattr("sslops.orchestration.pipeline.stage_order", lambda root: stages)
    assert cli.main(["estimate", "--all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["stages"]) == stages and out["unknown"] == stages[1:]
    assert out["total_s"] == out["stages"]["prepare"] == FIXED_S["prepare"]
    assert out["precision"].keys() == {"pretrain", "finetune"} and out["machine"]


def test_an_estimate_that_fails_warns_and_lets_the_run_go_on(project, monkeypatch, capsys):
    """The estimate advises: a calibration that breaks must not stop `sslops repro` from running the pipeline."""
    from sslops import cli

    def broken(*_):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr("sslops.commands.estimate.estimate", broken)
    assert cli._advisory_estimate(project, ["pretrain"]) is None
    assert "warning: no estimate (RuntimeError: no such kernel); running anyway." in capsys.readouterr().err
