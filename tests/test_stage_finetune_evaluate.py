"""finetune -> evaluate on tiny data, in process, against a real MLflow SQLite store and registry; then the
commands that read their results: report, lineage and embed. (register itself: tests/test_stage_register.py.)"""

from __future__ import annotations

import json
import re

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TASK, mlflow_runs, run_task, set_param
from sslops.cli import main
from sslops.commands.report import results_markdown
from sslops.config import Project
from sslops.config.validation import parse_section
from sslops.errors import SslopsError
from sslops.ml.device import amp_name, cpu_model
from sslops.ml.transfer import FinetuneConfig
from sslops.stages.evaluate import FIGURES


@pytest.fixture
def registered(pretrained):
    """Two registered encoders of the same data: version 1 is `champion`, version 2 (pretrain.seed 1, not promoted)
    is `candidate`."""
    assert main(["register"]) == 0
    set_param(pretrained.root, "pretrain", "seed", 1)
    set_param(pretrained.root, "register", "min_improvement", 1.0)  # version 2 cannot beat version 1 by more
    assert main(["pretrain"]) == 0 and main(["register"]) == 0
    return pretrained


@pytest.mark.integration
def test_finetune_evaluate_report_lineage_and_embed(registered, capsys, tmp_path):
    project = registered
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow' / 'mlflow.db'}")
    v1 = mlflow.MlflowClient().get_model_version("sslops-encoder-fashion-mnist", "1")
    pretrain_run = next(r for r in mlflow_runs(project.root) if r.info.run_name == "pretrain")

    set_param(project.root, "tasks", TASK, {**project.section("tasks")[TASK], "budgets": ["2/class", 0.25, 1.0]})
    set_param(project.root, "finetune", "chosen", {TASK: {"frac_0.25": {"pretrained": "lpft"}}})
    set_param(project.root, "finetune", "distill", {"budgets": ["frac_0.25"], "recipe": {"max_steps": 4}})
    declared = {"frac_0.25": {"pretrained": "distill", "scratch": "linear"}}  # what the search would have chosen
    set_param(project.root, "finetune", "headline", {TASK: declared})
    run_task(stages=("prepare", "validate", "finetune"))
    out_dir = project.outputs(TASK)
    index = json.loads((out_dir.finetune / "index.json").read_text())
    assert index["model"]["version"] == 2  # finetune.model `candidate`: the version metrics/register.json names
    combos = {(e["budget"], e["init"], e["protocol"]) for e in index["entries"]}
    budgets = ("per_class_2", "frac_0.25", "frac_1")
    inits, protocols = ("pretrained", "scratch", "pixels"), ("linear", "knn", "finetune")
    distilled = {("frac_0.25", i, "distill") for i in ("pretrained", "scratch")}  # finetune.distill.budgets
    assert combos - distilled == {
        (b, i, p) for b in budgets for i in inits for p in protocols if (i, p) != ("pixels", "finetune")
    }
    assert distilled <= combos
    labels = {e["budget"]: e["labels"] for e in index["entries"]}
    assert labels == {"per_class_2": 8, "frac_0.25": 20, "frac_1": 80}  # 2 x 4 classes; 25 % of 80; all
    # finetune.draws (3) label subsets below 100 %, each its own bank; 100 % is one subset
    draws = {b: sorted({e["draw"] for e in index["entries"] if e["budget"] == b}) for b in budgets}
    assert draws == {"per_class_2": [0, 1, 2], "frac_0.25": [0, 1, 2], "frac_1": [0]}
    banks = [np.load(out_dir.finetune / f"knn-scratch-frac_0.25-d{d}.npy") for d in range(3)]
    assert not np.array_equal(banks[0], banks[1]) and len(banks[0]) == len(banks[1]) == 20
    # each budget and init fine-tunes with its chosen trial (finetune.chosen), else the base recipe
    trials = {(e["budget"], e["init"]): e["trial"] for e in index["entries"] if e["protocol"] == "finetune"}
    assert trials.pop(("frac_0.25", "pretrained")) == "lpft" and set(trials.values()) == {"base"}
    finetuned = json.loads((out_dir.metrics / "finetune.json").read_text())
    assert finetuned["models"] == len(index["entries"]) == 62
    # the machine and precision travel with the results (finetune.amp `auto` as it resolved here)
    assert finetuned["machine"] == cpu_model() and finetuned["amp"] == amp_name("auto", torch.device("cpu"))
    # each init's headline protocol is flagged (finetune.headline, else fine-tuning; raw pixels: the linear probe)
    flagged = {(e["budget"], e["init"], e["protocol"]) for e in index["entries"] if e["headline"]}
    assert flagged == {
        (b, i, declared.get(b, {}).get(i, "finetune" if i != "pixels" else "linear")) for b in budgets for i in inits
    }

    capsys.readouterr()
    assert main(["evaluate", "--task", TASK]) == 0
    out = capsys.readouterr().out
    assert "results table: sslops report" in out and "| protocol | init |" not in out  # the report prints it
    metrics = json.loads((out_dir.metrics / "evaluate.json").read_text())
    for b, i, p in combos:
        assert 0 <= metrics[f"test.acc.{b}.{p}.{i}"] <= 1 and 0 <= metrics[f"test.macro_f1.{b}.{p}.{i}"] <= 1
    assert {"headline.per_class_2.gain_vs_pixels", "headline.frac_1.best_pixels"} <= set(metrics)
    assert metrics["headline.frac_0.25.best_pretrained_protocol"] == "distill"
    assert metrics["headline.frac_0.25.best_scratch"] == metrics["test.acc.frac_0.25.linear.scratch"]
    assert (
        metrics["headline.per_class_2.best_pretrained_protocol"],
        metrics["headline.per_class_2.best_scratch_protocol"],
    ) == ("finetune", "finetune")
    assert metrics["headline.frac_1.best_pixels"] == metrics["test.acc.frac_1.linear.pixels"]
    results = json.loads((out_dir.evaluate / "results.json").read_text())
    first = results["results"][0]
    assert np.asarray(first["confusion"]).sum() == 20 and len(first["per_class_acc"]) == 4
    assert np.trace(first["confusion"]) / 20 == pytest.approx(first["acc"])
    for name in ("label_efficiency.png", "confusion.png", "embedding_map.png"):
        assert (out_dir.plots / name).stat().st_size > 5000
    csv = (out_dir.plots / "label_efficiency.csv").read_text().splitlines()
    series = ["distill_pretrained", "distill_scratch"] + [
        f"{p}_{i}" for p in ("finetune", "knn", "linear") for i in sorted(inits) if (i, p) != ("pixels", "finetune")
    ]
    assert csv[0] == "labels," + ",".join(series)
    assert [line.split(",")[:3] for line in csv[1:]] == [["8", "", ""], ["20", *csv[2].split(",")[1:3]], ["80", "", ""]]
    assert all(csv[2].split(",")[1:3])  # distilled at 20 labels only

    runs = mlflow_runs(project.root)
    evaluate = next(r for r in runs if r.info.run_name == f"evaluate/{TASK}")
    assert evaluate.data.tags["model.version"] == "2" and evaluate.data.tags["sslops.task"] == TASK
    assert evaluate.data.tags["finetune.run_id"] == index["parent_run_id"]
    store = mlflow.MlflowClient(f"sqlite:///{project.root / 'mlflow' / 'mlflow.db'}")
    logged = {a.path for a in store.list_artifacts(evaluate.info.run_id, "evaluation")}
    assert {f"evaluation/{name}" for name in FIGURES} | {"evaluation/results.json"} <= logged  # the CSVs too
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == index["parent_run_id"]]
    assert len(children) == len(index["entries"]) and all("test.acc" in r.data.metrics for r in children)
    parent = next(r for r in runs if r.info.run_id == index["parent_run_id"])
    assert {r.info.experiment_id for r in children} == {parent.info.experiment_id}  # not MLflow's Default one
    lpft = next(r for r in children if r.info.run_name == f"{TASK}/frac_0.25/d2/pretrained/finetune")
    assert lpft.data.params["trial"] == "lpft" and lpft.data.params["recipe_optimizer"] == "sgd"
    student = next(r for r in children if r.info.run_name == f"{TASK}/frac_0.25/d1/scratch/distill")
    assert student.data.params["recipe_max_steps"] == "4" and student.data.metrics["steps"] == 4
    assert f"{TASK}/frac_1/d0/pixels/knn" in {r.info.run_name for r in children}
    assert 0 <= metrics["test.acc_std.frac_0.25.finetune.scratch"] <= 0.5

    # `sslops report` prints one results table per task.
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert f"**Task `{TASK}`**" in out
    assert "| protocol | init | 2/class (8 labels, 3 draws) | 25 % (20 labels, 3 draws) | 100 % (80 labels) |" in out
    assert "best pretrained − best scratch (best against best)" in out
    assert "best pretrained − linear probe on raw pixels" in out
    assert f"Fine-tuned on {cpu_model()}, precision {amp_name('auto', torch.device('cpu'))}." in out
    assert re.search(r"\| linear \| scratch \| \d+\.\d\d % ± \d+\.\d\d \| [^|]+ \| \d+\.\d\d % \|", out)
    assert re.search(r"\| distill \| pretrained \| — \| \d+\.\d\d % ± \d+\.\d\d \| — \|", out)
    assert "Not a result" not in out and results["run_id"] == evaluate.info.run_id
    # ... and says so when the evaluate run behind a table did not finish (it failed after writing its results)
    store.set_terminated(evaluate.info.run_id, "FAILED")
    assert main(["report"]) == 0
    assert f"**Not a result**: the evaluate run behind these figures (`{evaluate.info.run_id}`) is FAILED" in (
        capsys.readouterr().out
    )
    with pytest.raises(SslopsError, match=f"task {TASK}: the evaluate run .* is FAILED, not FINISHED"):
        results_markdown(project, readme=True)  # the README never takes such figures
    store.set_terminated(evaluate.info.run_id, "FINISHED")

    # Lineage from the alias back to data and forward to downstream runs; reverse from the data md5.
    assert main(["lineage", "candidate", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["model"]["version"] == 2 and chain["pretrain"]["run_id"] == pretrain_run.info.run_id
    assert chain["validation"]["success"] == "True" and chain["augment_cache"]["views"] == "2"
    assert {(d["stage"], d["task"]) for d in chain["downstream"]} == {("finetune", TASK), ("evaluate", TASK)}
    assert len(chain["data"]["val_digest"]) == 16  # what the promotion metric was scored on
    assert main(["lineage", "--data", v1.tags["data.dvc_md5"]]) == 0
    assert "2 model version(s)" in capsys.readouterr().out

    # `sslops embed` writes features of a folder of images from the champion.
    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(images / "a.png")
    Image.fromarray(np.full((12, 12, 3), 200, np.uint8)).save(images / "sub" / "b.jpg")
    assert main(["embed", str(images), "--out", str(images)]) == 2  # a folder: said before the work, not after
    assert f"--out {images} is a folder" in capsys.readouterr().err
    assert main(["embed", str(images), "--out", str(tmp_path / "emb.npz")]) == 0
    emb = np.load(tmp_path / "emb.npz")
    feature_dim = json.loads((project.root / "artifacts" / "pretrain" / "encoder.json").read_text())["feature_dim"]
    assert list(emb["paths"]) == ["a.png", "sub/b.jpg"] and emb["embeddings"].shape == (2, feature_dim)

    # The recipe search (sslops search-recipes): each trial scored on every subset's held-out labels, beside the
    # linear probe on the same split; nothing the finetune stage wrote changes.
    before = {f.name: f.stat().st_mtime_ns for f in out_dir.finetune.iterdir()}
    set_param(project.root, "finetune", "search", {"holdout": 0.25, "auto": []})
    out_json = tmp_path / "search.json"
    assert main(["search-recipes", "--task", TASK, "--trials", "base,lr3e-3", "--json", str(out_json)]) == 0
    assert "lr3e-3: per_class_2.pretrained " in capsys.readouterr().out
    found = json.loads(out_json.read_text())
    assert set(found["scores"]) == {"base", "lr3e-3"} and found["model"]["version"] == 2 and found["holdout"] == 0.25
    for scores in found["scores"].values():
        for b in budgets:
            for i in ("pretrained", "scratch"):
                assert 0 <= scores[f"holdout.acc.{b}.{i}"] <= 1 and scores[f"holdout.acc_std.{b}.{i}"] >= 0
                assert 0 <= scores[f"holdout.linear_acc.{b}.{i}"] <= 1
        assert scores["holdout.acc_std.frac_1.scratch"] == 0 and scores["seconds"] > 0  # one subset at 100 %
    probe = "holdout.linear_acc.frac_0.25.pretrained"  # fitted once per subset: the same for every trial
    assert found["scores"]["base"][probe] == found["scores"]["lr3e-3"][probe]
    search_runs = [r for r in mlflow_runs(project.root) if r.data.tags.get("mlflow.parentRunId") == found["run_id"]]
    assert f"{TASK}/frac_0.25/d2/scratch/search-lr3e-3" in {r.info.run_name for r in search_runs}
    assert {f.name: f.stat().st_mtime_ns for f in out_dir.finetune.iterdir()} == before
    assert main(["search-recipes", "--task", TASK, "--trials", "fast"]) == 2
    assert "--trials names fast, not in finetune.trials" in capsys.readouterr().err

    # A task with no committed choices (a user's own) searches finetune.search.auto itself, alike for both inits,
    # and fine-tunes and declares its headline by what it found; evaluate scores those models.
    set_param(project.root, "finetune", "search", {"holdout": 0.25, "auto": ["base", "lr3e-3"]})
    for key in ("chosen", "headline"):
        set_param(project.root, "finetune", key, {})
    set_param(project.root, "finetune", "distill", {"budgets": [], "recipe": {"max_steps": 4}})
    assert main(["finetune", "--task", TASK]) == 0
    assert "searching base, lr3e-3 on 25% held-out labels of each subset" in capsys.readouterr().out
    own = json.loads((out_dir.finetune / "index.json").read_text())
    choices = json.loads((out_dir.metrics / "finetune.json").read_text())["search"]
    assert set(choices) == set(budgets) and all(set(c) == {"pretrained", "scratch"} for c in choices.values())
    for e in own["entries"]:
        if e["init"] == "pixels":
            continue
        choice = choices[e["budget"]][e["init"]]
        assert set(choice["holdout_acc"]) == {"base", "lr3e-3", "linear"}
        assert e["headline"] == (e["protocol"] == choice["headline"])
        if e["protocol"] == "finetune":
            assert e["trial"] == choice["trial"]
    assert {(e["trial"] if e["protocol"] == "finetune" else "linear") for e in own["task_search"]} == {
        "base",
        "lr3e-3",
        "linear",
    }
    parent = next(r for r in mlflow_runs(project.root) if r.info.run_name == f"finetune/{TASK}")
    assert parent.data.tags["search.frac_1.scratch"].startswith(choices["frac_1"]["scratch"]["trial"])
    assert main(["evaluate", "--task", TASK]) == 0


@pytest.mark.integration
def test_finetune_names_a_missing_model_an_unknown_task_and_a_budget_no_task_has(pretrained, capsys):
    set_param(pretrained.root, "finetune", "model", "nonexistent")
    run_task(stages=("prepare", "validate"))
    assert main(["finetune", "--task", TASK]) == 2
    assert "no version or alias 'nonexistent'" in capsys.readouterr().err
    assert main(["finetune", "--task", "cifar"]) == 2
    assert f"unknown task 'cifar': params.yaml's tasks are {TASK}" in capsys.readouterr().err
    set_param(pretrained.root, "finetune", "distill", {"budgets": ["frac_0.5"], "recipe": {}})
    assert main(["finetune", "--task", TASK]) == 2
    assert "finetune.distill.budgets names frac_0.5, which no task has (their budgets: frac_" in capsys.readouterr().err


def test_declarations_for_budgets_a_task_lacks_are_named(project, capsys):
    from sslops.stages.finetune import _warn_undeclarable

    cfg = project.config("finetune").model_copy(
        update={"chosen": {TASK: {"frac_0.001": {"pretrained": "base"}}}, "headline": {"other": {"frac_0.5": {}}}}
    )
    _warn_undeclarable(cfg, TASK, [0.01, "10/class"])
    err = capsys.readouterr().err
    assert f"finetune.chosen.{TASK} names frac_0.001, which task {TASK} does not have (its budgets: frac_0.01, " in err
    assert "per_class_10): ignored; a budget declared nothing for uses the base recipe." in err
    assert "headline" not in err  # another task's declarations are that task's business
    _warn_undeclarable(cfg.model_copy(update={"chosen": {TASK: {"frac_0.01": {"scratch": "base"}}}}), TASK, [0.01])
    assert capsys.readouterr().err == ""


def test_recipe_numbers_written_without_a_dot_are_numbers(project):
    recipe = {**project.section("finetune")["recipe"], "lr": "5e-2", "max_steps": 10, "crop_scale": [0.5, 1]}
    set_param(project.root, "finetune", "recipe", recipe)
    set_param(project.root, "finetune", "seed", 3)
    project = Project(project.root)
    assert project.section("finetune")["recipe"]["lr"] == "5e-2"  # YAML 1.1 reads 5e-2 as a string
    cfg = project.config("finetune")
    core = cfg.recipe.to_core(FinetuneConfig, seed=cfg.seed)  # what the finetune stage trains with
    assert (core.lr, core.max_steps, core.crop_scale, core.seed) == (0.05, 10, (0.5, 1.0), 3)


def test_bad_recipe_keys_are_named(project):
    section = project.section("finetune")
    with pytest.raises(SslopsError, match="finetune.recipe.lr in params.yaml: must be a valid number"):
        parse_section("finetune", {**section, "recipe": {**section["recipe"], "lr": "fast"}})
    with pytest.raises(
        SslopsError, match=r"finetune.recipe.lr_scale in params.yaml: unknown key \(known: optimizer,"
    ) as err:
        parse_section("finetune", {**section, "recipe": {**section["recipe"], "lr_scale": 1}})
    assert "trials" not in str(err.value)  # said once, not again for every trial built on the recipe


def test_distill_settings_are_checked_and_build_on_the_recipe(project):
    section = project.section("finetune")

    def distill(**value):
        return parse_section("finetune", {**section, "distill": value}).distill

    with pytest.raises(SslopsError, match=r"finetune.distill.budgets.0 in params.yaml: must be a budget key .* '1%'"):
        distill(budgets=["1%"], recipe={})
    with pytest.raises(SslopsError, match="finetune.distill.recipe.lr in params.yaml: must be a valid number"):
        distill(budgets=[], recipe={"lr": "fast"})
    with pytest.raises(SslopsError, match="recipe.head must be 'fresh'"):
        distill(budgets=[], recipe={"head": "probe"})
    student = distill(budgets=["frac_0.01", "per_class_10"], recipe={"max_steps": 50}).recipe
    assert student.max_steps == 50 and student.lr == project.config("finetune").recipe.lr  # the rest: the base
