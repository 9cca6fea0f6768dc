"""The register stage against a real MLflow SQLite store and registry: the promotion rule, aliases, lineage tags
on the version, the registered model, and clear errors."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from conftest import mlflow_runs, set_param, write_idx_dataset
from sslops.cli import main
from sslops.stages.register import decide


def test_promotion_rule():
    assert decide(0.5, None, 0.0) == (True, "no champion yet")
    assert decide(0.81, 0.80, 0.0)[0] is True
    assert decide(0.80, 0.80, 0.0)[0] is False  # a tie keeps the champion
    assert decide(0.805, 0.80, 0.01)[0] is False  # not better by more than min_improvement
    assert decide(0.8, 0.7, 0.1)[0] is False  # better by exactly min_improvement (0.8 - 0.7 > 0.1 in floats)
    assert decide(0.8001, 0.7, 0.1)[0] is True


def client(project):
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow' / 'mlflow.db'}")
    return mlflow.MlflowClient()


@pytest.mark.integration
def test_register_promotes_reuses_its_version_and_keeps_the_champion_without_improvement(pretrained, capsys, tmp_path):
    project = pretrained
    assert main(["register"]) == 0
    reg = json.loads((project.metrics_dir / "register.json").read_text())
    assert reg["version"] == 1 and reg["promoted"] and reg["champion_version"] == 1
    assert reg["reason"] == "no champion yet"
    record = json.loads((project.root / "mlflow" / "registered.json").read_text())
    assert record["version"] == 1 and record["tracking_uri"].endswith("mlflow.db")
    c = client(project)
    v1 = c.get_model_version_by_alias("sslops-encoder-fashion-mnist", "champion")
    assert (
        str(v1.version) == "1"
        and str(c.get_model_version_by_alias("sslops-encoder-fashion-mnist", "candidate").version) == "1"
    )
    pretrain_run = next(r for r in mlflow_runs(project.root) if r.info.run_name == "pretrain")
    assert v1.tags["pretrain.run_id"] == pretrain_run.info.run_id
    assert v1.tags["data.dvc_md5"] == pretrain_run.data.tags["data.dvc_md5"]
    assert float(v1.tags["promotion.value"]) == pretrain_run.data.metrics["final.linear_acc"]
    assert v1.tags["promotion.decision"] == "promoted"
    # What a teammate sees in the UI: a model card on the version, a summary on the model, and the logged model
    # attached to the run that trained it, with that run's final metrics.
    card = v1.description
    assert card.startswith("### Model card: sslops-encoder-fashion-mnist v1")
    linear = 100 * pretrain_run.data.metrics["final.linear_acc"]
    method = f"| Method | {project.config('pretrain').method},"
    for fact in ("| Data | `data/fashion-mnist`", method, "small_cnn, input 12x12x1", f"{linear:.2f} %"):
        assert fact in card, (fact, card)
    assert pretrain_run.info.run_id in card and "sslops lineage sslops-encoder-fashion-mnist/1" in card
    assert "alias `champion`" in c.get_registered_model("sslops-encoder-fashion-mnist").description.replace(
        "Alias", "alias"
    )
    assert v1.run_id == pretrain_run.info.run_id
    logged = c.get_logged_model(v1.source.removeprefix("models:/"))  # the version's source is the logged model
    assert logged.source_run_id == pretrain_run.info.run_id
    assert {m.key: m.value for m in logged.metrics}["final.linear_acc"] == pretrain_run.data.metrics["final.linear_acc"]

    # The registered model loads through the registry and gives the pretrained encoder's features.
    model = mlflow.pytorch.load_model("models:/sslops-encoder-fashion-mnist@champion")
    weights = torch.load(project.root / "artifacts" / "pretrain" / "encoder.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    state_dict = mlflow.artifacts.download_artifacts(
        run_id=reg["run_id"], artifact_path="state_dict/encoder.pt", dst_path=str(tmp_path)
    )
    assert torch.load(state_dict, weights_only=True).keys() == weights.keys()

    # A champion promoted on another metric cannot be compared: a clear stop, no new version.
    set_param(project.root, "register", "metric", "knn_acc")
    assert main(["register"]) == 2
    assert "promoted on 'linear_acc', not on register.metric 'knn_acc'" in capsys.readouterr().err
    set_param(project.root, "register", "metric", "linear_acc")

    # The same encoder again: no second version of the same weights; both aliases stay on version 1.
    assert main(["register"]) == 0
    again = json.loads((project.metrics_dir / "register.json").read_text())
    assert (again["version"], again["champion_version"], again["reason"]) == (1, 1, "already champion")
    assert [str(v.version) for v in c.search_model_versions("name='sslops-encoder-fashion-mnist'")] == ["1"]

    # Trained again bit for bit (a forced rerun of pretrain): the same version, and its card still names the pretrain
    # run that first produced the weights, as the version's tags do.
    assert main(["pretrain"]) == 0 and main(["register"]) == 0
    assert json.loads((project.metrics_dir / "register.json").read_text())["version"] == 1
    assert pretrain_run.info.run_id in c.get_model_version("sslops-encoder-fashion-mnist", "1").description

    # Another encoder that does not beat the champion by more than min_improvement: `candidate` moves to the new
    # version and `champion` stays (the tie rule itself: test_promotion_rule).
    set_param(project.root, "pretrain", "seed", 1)
    set_param(project.root, "register", "min_improvement", 1.0)
    assert main(["pretrain"]) == 0 and main(["register"]) == 0
    reg2 = json.loads((project.metrics_dir / "register.json").read_text())
    assert reg2["version"] == 2 and not reg2["promoted"] and reg2["champion_version"] == 1
    assert reg2["reason"].endswith("by more than 1.0")
    assert str(c.get_model_version_by_alias("sslops-encoder-fashion-mnist", "candidate").version) == "2"
    assert str(c.get_model_version_by_alias("sslops-encoder-fashion-mnist", "champion").version) == "1"
    assert c.get_model_version("sslops-encoder-fashion-mnist", "2").tags["promotion.decision"] == "kept"

    # The champion moves when a version beats it: the same encoder under a rule it now passes (the champion's score
    # set just below version 2's, as if version 1 had scored lower), registered again, becomes champion.
    c.set_model_version_tag("sslops-encoder-fashion-mnist", "1", "promotion.value", str(reg2["value"] - 0.01))
    set_param(project.root, "register", "min_improvement", 0.0)
    assert main(["register"]) == 0
    reg3 = json.loads((project.metrics_dir / "register.json").read_text())
    assert (reg3["version"], reg3["promoted"], reg3["champion_version"]) == (2, True, 2)
    assert reg3["reason"].startswith(f"{reg2['value']:.5f} beats champion's")
    assert str(c.get_model_version_by_alias("sslops-encoder-fashion-mnist", "champion").version) == "2"
    assert c.get_model_version("sslops-encoder-fashion-mnist", "2").tags["promotion.decision"] == "promoted"


@pytest.mark.integration
def test_register_without_its_pretrain_run_is_a_clear_error(pretrained, capsys, monkeypatch, tmp_path):
    # e.g. a fresh store while DVC restored artifacts/pretrain from its cache
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    assert main(["register"]) == 2
    assert "does not hold the run that produced artifacts/pretrain" in capsys.readouterr().err


@pytest.mark.integration
def test_a_second_datasets_encoder_is_never_compared_with_the_first_datasets_champion(pretrained):
    """Issue 13: an encoder of another dataset was refused because its accuracy, on other test images, did not beat
    the Fashion-MNIST champion's. Each pretraining dataset now has its own registered model and champion."""
    project = pretrained
    assert main(["register"]) == 0
    set_param(project.root, "register", "min_improvement", 1.0)  # any comparison at all would now refuse promotion
    write_idx_dataset(project.root / "data" / "other", noise=200, seed=5)  # much harder data: a far lower score
    set_param(project.root, "prepare", "root", "data/other")
    for stage in ("prepare", "validate", "augment", "pretrain", "register"):
        assert main([stage]) == 0, stage
    reg = json.loads((project.metrics_dir / "register.json").read_text())
    assert (reg["model_name"], reg["version"], reg["promoted"]) == ("sslops-encoder-other", 1, True)
    assert reg["reason"] == "no champion yet"
    c = client(project)
    first = c.get_model_version_by_alias("sslops-encoder-fashion-mnist", "champion")
    assert str(first.version) == "1" and first.tags["promotion.decision"] == "promoted"  # untouched
    assert [str(v.version) for v in c.search_model_versions("name='sslops-encoder-fashion-mnist'")] == ["1"]
