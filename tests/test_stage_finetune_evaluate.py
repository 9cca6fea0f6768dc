"""finetune -> evaluate on tiny data, in process, against a real MLflow SQLite store and registry; then the
commands that read their results: report, lineage and embed. (register itself: tests/test_stage_register.py.)"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import mlflow_runs, set_param
from sslops.cli import main
from sslops.config import Project
from sslops.config.validation import parse_section
from sslops.errors import SslopsError
from sslops.ml.transfer import FinetuneConfig


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
    v1 = mlflow.MlflowClient().get_model_version("sslops-encoder", "1")
    pretrain_run = next(r for r in mlflow_runs(project.root) if r.info.run_name == "pretrain")

    assert main(["finetune"]) == 0
    index = json.loads((project.root / "artifacts" / "finetune" / "index.json").read_text())
    assert index["model"]["version"] == 2  # finetune.model `candidate`: the version metrics/register.json names
    combos = {(e["fraction"], e["init"], e["protocol"]) for e in index["entries"]}
    assert combos == {
        (f, i, p) for f in (0.25, 1.0) for i in ("pretrained", "scratch") for p in ("linear", "knn", "finetune")
    }
    assert {e["labels"] for e in index["entries"]} == {20, 80}  # 25 % of 80 = 5 per class x 4, then all

    capsys.readouterr()
    assert main(["evaluate"]) == 0
    out = capsys.readouterr().out
    assert "results table: sslops report" in out and "| protocol | init |" not in out  # the report prints it
    metrics = json.loads((project.metrics_dir / "evaluate.json").read_text())
    for f in ("0.25", "1"):
        for p in ("linear", "knn", "finetune"):
            for i in ("pretrained", "scratch"):
                assert 0 <= metrics[f"test.acc.frac_{f}.{p}.{i}"] <= 1
                assert 0 <= metrics[f"test.macro_f1.frac_{f}.{p}.{i}"] <= 1
    results = json.loads((project.root / "artifacts" / "evaluate" / "results.json").read_text())
    first = results["results"][0]
    assert np.asarray(first["confusion"]).sum() == 20 and len(first["per_class_acc"]) == 4
    assert np.trace(first["confusion"]) / 20 == pytest.approx(first["acc"])
    for name in ("label_efficiency.png", "confusion.png", "embedding_map.png"):
        assert (project.root / "plots" / name).stat().st_size > 5000
    csv = (project.root / "plots" / "label_efficiency.csv").read_text().splitlines()
    header = "labels,finetune_pretrained,finetune_scratch,knn_pretrained,knn_scratch,linear_pretrained,linear_scratch"
    assert csv[0] == header
    assert [line.split(",")[0] for line in csv[1:]] == ["20", "80"]

    runs = mlflow_runs(project.root)
    evaluate = next(r for r in runs if r.info.run_name == "evaluate")
    assert evaluate.data.tags["model.version"] == "2"
    assert evaluate.data.tags["finetune.run_id"] == index["parent_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == index["parent_run_id"]]
    assert len(children) == 12 and all("test.acc" in r.data.metrics for r in children)
    assert {r.info.run_name for r in children} >= {"frac_0.25/pretrained/finetune", "frac_1/scratch/knn"}

    # `sslops report` prints the results table of the evaluate run.
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert "| protocol | init |" in out and "gain" in out

    # Lineage from the alias back to data and forward to downstream runs; reverse from the data md5.
    assert main(["lineage", "candidate", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["model"]["version"] == 2 and chain["pretrain"]["run_id"] == pretrain_run.info.run_id
    assert chain["validation"]["success"] == "True" and chain["augment_cache"]["views"] == "2"
    assert {d["stage"] for d in chain["downstream"]} == {"finetune", "evaluate"}
    assert main(["lineage", "--data", v1.tags["data.dvc_md5"]]) == 0
    assert "2 model version(s)" in capsys.readouterr().out

    # `sslops embed` writes features of a folder of images from the champion.
    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(images / "a.png")
    Image.fromarray(np.full((12, 12, 3), 200, np.uint8)).save(images / "sub" / "b.jpg")
    assert main(["embed", str(images), "--out", str(tmp_path / "emb.npz")]) == 0
    emb = np.load(tmp_path / "emb.npz")
    feature_dim = json.loads((project.root / "artifacts" / "pretrain" / "encoder.json").read_text())["feature_dim"]
    assert list(emb["paths"]) == ["a.png", "sub/b.jpg"] and emb["embeddings"].shape == (2, feature_dim)


@pytest.mark.integration
def test_finetune_names_a_missing_model(pretrained, capsys):
    set_param(pretrained.root, "finetune", "model", "nonexistent")
    assert main(["finetune"]) == 2
    assert "no version or alias 'nonexistent'" in capsys.readouterr().err


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
    with pytest.raises(SslopsError, match=r"finetune.recipe.lr_scale in params.yaml: unknown key \(known: epochs,"):
        parse_section("finetune", {**section, "recipe": {**section["recipe"], "lr_scale": 1}})
