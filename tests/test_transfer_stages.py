"""register -> finetune -> evaluate on tiny data, in process, against a real MLflow SQLite store and registry."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from conftest import mlflow_runs, set_param
from PIL import Image

from sslops.cli import main
from sslops.errors import SslopsError
from sslops.stages.register import decide

pytestmark = pytest.mark.integration


def test_promotion_rule():
    assert decide(0.5, None, 0.0) == (True, "no champion yet")
    assert decide(0.81, 0.80, 0.0)[0] is True
    assert decide(0.80, 0.80, 0.0)[0] is False  # a tie keeps the champion
    assert decide(0.805, 0.80, 0.01)[0] is False  # not better by more than min_improvement


@pytest.fixture
def pretrained(project):
    for stage in ("prepare", "validate", "augment", "pretrain"):
        assert main([stage]) == 0, stage
    return project


def client(project):
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow' / 'mlflow.db'}")
    return mlflow.MlflowClient()


def test_register_finetune_evaluate_chain(pretrained, capsys, tmp_path):
    project = pretrained
    assert main(["register"]) == 0
    reg = json.loads((project.metrics_dir / "register.json").read_text())
    assert reg["version"] == 1 and reg["promoted"] and reg["champion_version"] == 1 and reg["reason"] == "no champion yet"
    record = json.loads((project.root / "mlflow" / "registered.json").read_text())
    assert record["version"] == 1 and record["tracking_uri"].endswith("mlflow.db")
    c = client(project)
    v1 = c.get_model_version_by_alias("sslops-encoder", "champion")
    assert str(v1.version) == "1" and str(c.get_model_version_by_alias("sslops-encoder", "candidate").version) == "1"
    pretrain_run = next(r for r in mlflow_runs(project.root) if r.info.run_name == "pretrain")
    assert v1.tags["pretrain.run_id"] == pretrain_run.info.run_id
    assert v1.tags["data.dvc_md5"] == pretrain_run.data.tags["data.dvc_md5"]
    assert float(v1.tags["promotion.value"]) == pretrain_run.data.metrics["final.linear_acc"]
    assert v1.tags["promotion.decision"] == "promoted"

    # The registered model loads through the registry and gives the pretrained encoder's features.
    model = mlflow.pytorch.load_model("models:/sslops-encoder@champion")
    weights = torch.load(project.root / "artifacts" / "pretrain" / "encoder.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    state_dict = mlflow.artifacts.download_artifacts(run_id=reg["run_id"], artifact_path="state_dict/encoder.pt", dst_path=str(tmp_path))
    assert torch.load(state_dict, weights_only=True).keys() == weights.keys()

    # A champion promoted on another metric cannot be compared: a clear stop, no new version.
    set_param(project.root, "register", "metric", "knn_acc")
    assert main(["register"]) == 2
    assert "promoted on 'linear_acc', not on register.metric 'knn_acc'" in capsys.readouterr().err
    set_param(project.root, "register", "metric", "linear_acc")

    # Same encoder again: a tie, so `candidate` moves and `champion` stays.
    assert main(["register"]) == 0
    reg2 = json.loads((project.metrics_dir / "register.json").read_text())
    assert reg2["version"] == 2 and not reg2["promoted"] and reg2["champion_version"] == 1
    assert str(c.get_model_version_by_alias("sslops-encoder", "candidate").version) == "2"
    assert str(c.get_model_version_by_alias("sslops-encoder", "champion").version) == "1"
    assert c.get_model_version("sslops-encoder", "2").tags["promotion.decision"] == "kept"

    assert main(["finetune"]) == 0
    index = json.loads((project.root / "artifacts" / "finetune" / "index.json").read_text())
    assert index["model"]["version"] == 2  # finetune.model defaults to the `candidate` alias
    combos = {(e["fraction"], e["init"], e["protocol"]) for e in index["entries"]}
    assert combos == {(f, i, p) for f in (0.25, 1.0) for i in ("pretrained", "scratch") for p in ("linear", "knn", "finetune")}
    assert {e["labels"] for e in index["entries"]} == {20, 80}  # 25 % of 80 = 5 per class x 4, then all

    assert main(["evaluate"]) == 0
    out = capsys.readouterr().out
    assert "| protocol | init |" in out and "gain" in out
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
    assert csv[0] == "labels,finetune_pretrained,finetune_scratch,knn_pretrained,knn_scratch,linear_pretrained,linear_scratch"
    assert [line.split(",")[0] for line in csv[1:]] == ["20", "80"]

    runs = mlflow_runs(project.root)
    evaluate = next(r for r in runs if r.info.run_name == "evaluate")
    assert evaluate.data.tags["model.version"] == "2" and evaluate.data.tags["finetune.run_id"] == index["parent_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == index["parent_run_id"]]
    assert len(children) == 12 and all("test.acc" in r.data.metrics for r in children)
    assert {r.info.run_name for r in children} >= {"frac_0.25/pretrained/finetune", "frac_1/scratch/knn"}

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
    assert list(emb["paths"]) == ["a.png", "sub/b.jpg"] and emb["embeddings"].shape == (2, model.feature_dim)


def test_finetune_names_a_missing_model(pretrained, capsys):
    set_param(pretrained.root, "finetune", "model", "nonexistent")
    assert main(["finetune"]) == 2
    assert "no version or alias 'nonexistent'" in capsys.readouterr().err


def test_register_without_its_pretrain_run_is_a_clear_error(pretrained, capsys, monkeypatch, tmp_path):
    # e.g. a fresh store while DVC restored artifacts/pretrain from its cache
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    assert main(["register"]) == 2
    assert "does not hold the run that produced artifacts/pretrain" in capsys.readouterr().err


def test_model_refs_and_recipe_numbers():
    from sslops.lineage import parse_ref
    from sslops.stages.finetune import recipe

    assert parse_ref("models:/enc@champion", "d") == ("enc", "champion")
    assert parse_ref("models:/enc/3", "d") == ("enc", "3")
    assert parse_ref("candidate", "d") == ("d", "candidate") and parse_ref("@champion", "d") == ("d", "champion")
    cfg = recipe({"recipe": {"lr": "5e-2", "max_steps": "10", "crop_scale": [0.5, 1]}}, seed=3)
    assert (cfg.lr, cfg.max_steps, cfg.crop_scale, cfg.seed) == (0.05, 10, (0.5, 1.0), 3)
    with pytest.raises(SslopsError, match="finetune.recipe.lr"):
        recipe({"recipe": {"lr": "fast"}}, seed=0)
    with pytest.raises(SslopsError, match="unknown finetune.recipe keys: lr_scale"):
        recipe({"recipe": {"lr_scale": 1}}, seed=0)
