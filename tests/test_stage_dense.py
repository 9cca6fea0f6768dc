"""A detection and a segmentation task through their four stages (prepare, validate, finetune, evaluate), in process
against a real MLflow store and registry and real Great Expectations suites, on tiny generated scenes; and what each
refuses."""

from __future__ import annotations

import json
import shutil

import mlflow
import pandas as pd
import pytest
import yaml

from conftest import mlflow_runs, run_task, scene_items, set_param
from sslops.cli import main
from sslops.commands import lineage
from sslops.commands.report import results_markdown
from sslops.config.validation import parse_section
from sslops.data import scenes
from sslops.errors import SslopsError

COUNTS = {"train": 16, "test": 6}
MASK_CLASSES = ["background", *scenes.CLASSES]


def _task(kind: str, budgets: list) -> dict:
    fmt, classes = ("coco", []) if kind == "detection" else ("masks", MASK_CLASSES)
    return {"kind": kind, "format": fmt, "root": "data/scenes", "classes": classes, "budgets": budgets}


@pytest.fixture
def scene_project(project, tmp_path):
    """The test project with its pretraining data prepared, tiny scenes under data/scenes, a detection task `boxes`
    and a segmentation task `masks` on them, and a seconds-long dense recipe with two trials to choose from."""
    assert main(["prepare"]) == 0
    scenes.generate(project.root / "data" / "scenes", scene_items(tmp_path / "items"), COUNTS)
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    params["tasks"] = {"boxes": _task("detection", [0.5, 1.0]), "masks": _task("segmentation", [0.5, 1.0])}
    (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    set_param(project.root, "validate", "min_class_share", 0.0)  # 37 boxes cannot give each of 10 classes a tenth
    recipe = {"steps": 3, "batch_size": 4, "lr": 1e-3, "backbone_lr_scale": 1.0, "weight_decay": 1e-4, "flip_p": 0.5}
    set_param(project.root, "finetune", "dense", {"recipe": recipe, "trials": {"base": {}, "lr3e-3": {"lr": 3e-3}}})
    set_param(project.root, "finetune", "draws", 2)
    return project


@pytest.fixture
def dense_project(scene_project):
    """`scene_project` with an encoder pretrained and registered."""
    for stage in ("validate", "augment", "pretrain", "register"):
        assert main([stage]) == 0, stage
    return scene_project


@pytest.mark.integration
def test_dense_tasks_run_their_four_stages_and_report_both_inits(dense_project):
    project = dense_project
    for task in ("boxes", "masks"):
        run_task(task)
        _check_task(project, task)
    report = results_markdown(project)
    assert "**Task `boxes`**: detection mAP@[.5:.95] on its full test split" in report
    assert "**Task `masks`**: segmentation mIoU on its full test split" in report
    for row in ("| mAP@[.5:.95] | pretrained |", "| mAP@.5 | scratch |", "| mIoU | pretrained |"):
        assert row in report
    assert "| **gain** | pretrained − scratch (mAP@[.5:.95]) |" in report
    downstream = lineage.model_chain(project, "1")["downstream"]  # from the mAP back to the encoder
    evaluated = {d["task"]: d for d in downstream if d["stage"] == "evaluate"}
    assert set(evaluated) == {"boxes", "masks"}
    assert "headline.frac_1.gain" in evaluated["boxes"]["metrics"]


def _check_task(project, task: str) -> None:
    out = project.outputs(task)
    index = json.loads((out.finetune / "index.json").read_text())
    assert {(e["budget"], e["draw"], e["init"]) for e in index["entries"]} == {
        (b, d, i)
        for b, draws in (("frac_0.5", 2), ("frac_1", 1))
        for d in range(draws)
        for i in ("pretrained", "scratch")
    }
    assert index["entries"][0]["labels"] == 8 and index["entries"][-1]["labels"] == 16
    for budget in ("frac_0.5", "frac_1"):  # both trials tried on held-out scenes, for both inits alike
        for init in ("pretrained", "scratch"):
            chosen = index["task_search"][budget][init]
            assert set(chosen["holdout"]) == {"base", "lr3e-3"} and chosen["trial"] in chosen["holdout"]
    metrics = json.loads((out.metrics / "evaluate.json").read_text())
    metric = "map" if task == "boxes" else "miou"
    for init in ("pretrained", "scratch"):
        assert 0 <= metrics[f"test.{metric}.frac_0.5.finetune.{init}"] <= 1
        assert metrics[f"test.{metric}_std.frac_0.5.finetune.{init}"] >= 0
    gain = metrics["headline.frac_1.gain"]
    assert gain == pytest.approx(
        metrics[f"test.{metric}.frac_1.finetune.pretrained"] - metrics[f"test.{metric}.frac_1.finetune.scratch"],
        abs=1e-4,
    )
    validated = json.loads((out.metrics / "validate.json").read_text())
    assert validated["success"] and validated["test_in_train"] == 0
    suites = {c["suite"] for c in json.loads((out.validation / "results.json").read_text())}
    assert suites == {"images", "class_balance", "boxes" if task == "boxes" else "masks"}
    for name in ("label_efficiency.png", "confusion.png", "embedding_map.png", "label_efficiency.csv", "confusion.csv"):
        assert (out.plots / name).stat().st_size > 0
    assert (out.evaluate / "examples.png").is_file()
    assert (out.evaluate / "precision_recall.png").is_file() == (task == "boxes")
    # ten classes and background (masks: its pixels; boxes: misses and false alarms)
    assert len(json.loads((out.evaluate / "results.json").read_text())["results"][0]["confusion"]) == 11
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow' / 'mlflow.db'}")
    children = [r for r in mlflow_runs(project.root) if r.data.tags.get("task") == task and "budget" in r.data.params]
    assert len(children) == 6 and all(f"test.{metric}" in r.data.metrics for r in children)


@pytest.mark.integration
def test_a_test_scene_also_in_train_fails_validation(scene_project):
    root = scene_project.root / "data" / "scenes"
    for folder in ("images", "masks"):
        shutil.copy(root / "test" / folder / "000000.png", root / "train" / folder / "leaked.png")
    assert main(["prepare", "--task", "masks"]) == 0
    assert main(["validate", "--task", "masks"]) == 1
    out = scene_project.outputs("masks")
    assert not out.validated_marker.exists()
    assert json.loads((out.metrics / "validate.json").read_text())["test_in_train"] == 1


@pytest.mark.integration
def test_a_box_moved_out_of_its_image_in_the_store_fails_validation(scene_project):
    """The readers refuse such a box, so only an edited or foreign store holds one: the suite is the second check."""
    assert main(["prepare", "--task", "boxes"]) == 0
    path = scene_project.outputs("boxes").prepared / "boxes.parquet"
    path.chmod(0o644)
    table = pd.read_parquet(path)
    table.loc[0, "x2"] = 200.0
    table.to_parquet(path, index=False)
    assert main(["validate", "--task", "boxes"]) == 1
    failed = json.loads((scene_project.outputs("boxes").metrics / "validate.json").read_text())["failed_expectations"]
    assert failed == ["expect_column_values_to_be_between(right)"]


@pytest.mark.integration
def test_a_box_outside_its_image_is_named_and_nothing_is_written(scene_project, capsys):
    path = scene_project.root / "data" / "scenes" / "train" / "annotations.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["bbox"] = [90, 90, 20, 20]
    path.write_text(json.dumps(coco))
    assert main(["prepare", "--task", "boxes"]) == 2
    err = capsys.readouterr().err
    assert f"annotation {coco['annotations'][0]['id']} (train/images/000000.png): bbox [90, 90, 20, 20] leaves" in err
    assert not scene_project.outputs("boxes").prepared.exists()


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({**_task("detection", [0.5]), "format": "masks"}, "a detection task is read from coco, not masks"),
        ({**_task("segmentation", [0.5]), "format": "idx"}, "a segmentation task is read from masks, not idx"),
        ({**_task("classification", [0.5]), "format": "coco"}, "is read from idx or imagefolder or cifar10, not coco"),
        (_task("detection", ["10/class"]), "budgets are fractions of its train images"),
        ({**_task("segmentation", [0.5]), "classes": []}, "a segmentation task lists its classes"),
    ],
)
def test_a_task_kind_is_read_from_its_own_formats(task, message):
    with pytest.raises(SslopsError, match=message):
        parse_section("tasks", {"scenes": task})
