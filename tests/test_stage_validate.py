"""The validate stage: a real Great Expectations run over the manifest, Data Docs, and clear failures
(the frames it validates: tests/test_quality.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import CLASSES, REPO, TASK, mlflow_runs, set_param, write_idx_dataset
from sslops.adapters.expectations import ASSETS
from sslops.cli import main
from sslops.config import Project
from sslops.data.idx import read_idx, write_idx

pytestmark = pytest.mark.integration  # every test runs the stage through the CLI: real GX suites, real MLflow store


def _data(project):
    return project.root / "data" / "fashion-mnist"


def _rewrite_test_images(project, edit) -> None:
    d = _data(project)
    train, test = read_idx(d / "train-images-idx3-ubyte"), read_idx(d / "t10k-images-idx3-ubyte").copy()
    edit(train, test)
    write_idx(d / "t10k-images-idx3-ubyte", test)


def test_clean_data_passes_and_writes_docs_metrics_and_run(project, capsys):
    assert main(["prepare"]) == 0
    # The suite's SQLite copy of the manifest lives beside the outputs while the stage runs; one that a killed run
    # left behind goes at the next start, and none stays after a run.
    folder = project.outputs().validation.parent
    (folder / ".validation-db.tmp-killed").mkdir(parents=True)
    (folder / ".validation-db.tmp-killed" / "manifest.db").write_bytes(b"left by a SIGKILL")
    assert main(["validate"]) == 0
    assert not list(folder.glob(".validation-db*"))
    summary = json.loads((project.metrics_dir / "validate.json").read_text())
    assert summary["success"] is True and summary["failed"] == 0 and summary["evaluated"] >= 30
    docs = project.outputs().validation / "data_docs"
    assert (docs / "index.html").is_file()
    assert list(docs.glob("validations/manifest/**/*.html")) and list(docs.glob("validations/class_balance/**/*.html"))
    run = mlflow_runs(project.root)[0]
    assert run.info.run_name == "validate" and run.data.tags["validation.success"] == "True"
    assert run.data.params["validate.min_class_share"] == "0.1"


def test_test_images_duplicating_train_fail_with_examples(project, capsys):
    def leak(train, test):
        test[:3] = train[:3]

    _rewrite_test_images(project, leak)
    assert main(["prepare"]) == 0
    capsys.readouterr()
    assert main(["validate"]) == 1
    err = capsys.readouterr().err
    assert "data validation failed" in err and "Traceback" not in err
    assert "expect_column_values_to_be_in_set(test_in_train) unexpected=3" in err
    assert "'source': 't10k-images-idx3-ubyte', 'index': 0" in err  # an example row
    summary = json.loads((project.metrics_dir / "validate.json").read_text())
    assert summary["success"] is False and summary["test_in_train"] == 3
    assert mlflow_runs(project.root)[0].info.status == "FAILED"


def test_missing_class_fails_class_balance(project, capsys):
    d = _data(project)
    labels = read_idx(d / "train-labels-idx1-ubyte").copy()
    labels[labels == 3] = 2
    write_idx(d / "train-labels-idx1-ubyte", labels)
    assert main(["prepare"]) == 0
    assert main(["validate"]) == 1
    err = capsys.readouterr().err
    assert "[class_balance] expect_column_values_to_be_between(count)" in err
    assert "'class_name': 'class3'" in err


def test_blank_images_over_cap_fail(project, capsys):
    def blank(train, test):
        test[5] = 128

    _rewrite_test_images(project, blank)
    assert main(["prepare"]) == 0 and main(["validate"]) == 1
    assert "expect_column_values_to_be_between(std) unexpected=1" in capsys.readouterr().err


def test_duplicates_within_split_respect_the_cap(project, capsys):
    def duplicate(train, test):
        test[1] = test[0]

    _rewrite_test_images(project, duplicate)
    assert main(["prepare"]) == 0 and main(["validate"]) == 1
    assert "(duplicate_in_split) unexpected=1" in capsys.readouterr().err
    set_param(project.root, "validate", "max_duplicate_share", 0.02)  # 1 of 100 rows is allowed now
    assert main(["validate"]) == 0


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("min_rows", 1000, "expect_table_row_count_to_be_between"),
        ("splits", ["train", "test", "unlabeled"], "expect_column_distinct_values_to_contain_set(split)"),
    ],
)
def test_threshold_params_are_enforced(project, capsys, key, value, expected):
    set_param(project.root, "validate", key, value)
    assert main(["prepare"]) == 0 and main(["validate"]) == 1
    assert expected in capsys.readouterr().err


def test_undeclared_class_is_reported(project, capsys):
    set_param(project.root, "prepare", "classes", CLASSES[:3])
    assert main(["prepare"]) == 0 and main(["validate"]) == 1
    err = capsys.readouterr().err
    assert "expect_column_values_to_be_in_set(class_name)" in err and "'3'" in err


def test_validate_before_prepare_is_a_clear_error(project, capsys):
    assert main(["validate"]) == 2
    assert "run the prepare stage first" in capsys.readouterr().err
    # A task is checked against the images pretraining learns from: without that store, one line says so.
    assert main(["prepare"]) == 0 and main(["prepare", "--task", TASK]) == 0
    shutil.rmtree(project.prepared_dir)
    capsys.readouterr()
    assert main(["validate", "--task", TASK]) == 2
    err = capsys.readouterr().err
    assert "manifest.parquet is missing: prepare the pretraining dataset first" in err and "Traceback" not in err


def test_a_task_whose_test_images_were_pretrained_on_fails(project, capsys):
    """A downstream task's test images that the encoder saw in pretraining would inflate its transfer results."""
    assert main(["prepare"]) == 0 and main(["validate"]) == 0
    assert main(["prepare", "--task", TASK]) == 0 and main(["validate", "--task", TASK]) == 0  # same data, no leak
    clean = json.loads((project.outputs(TASK).metrics / "validate.json").read_text())
    assert clean["success"] and clean["test_in_pretraining"] == 0
    other = project.root / "data" / "other"
    write_idx_dataset(other, seed=7)
    d = _data(project)
    test = read_idx(other / "t10k-images-idx3-ubyte").copy()
    test[:2] = read_idx(d / "train-images-idx3-ubyte")[:2]  # two images the encoder pretrains on
    write_idx(other / "t10k-images-idx3-ubyte", test)
    set_param(project.root, "tasks", "other", {**project.section("tasks")[TASK], "root": "data/other"})
    assert main(["prepare", "--task", "other"]) == 0
    capsys.readouterr()
    assert main(["validate", "--task", "other"]) == 1
    assert "expect_column_values_to_be_in_set(test_in_pretraining) unexpected=2" in capsys.readouterr().err
    assert not Project(project.root).outputs("other").validated_marker.exists()  # finetune@other will not run


def with_assets(project: Project) -> None:
    """The project's vendor/datadocs packages: this checkout's, which `make setup` installed with npm."""
    assert (REPO / ASSETS).is_dir(), "vendor/datadocs is not installed: run make setup (needs npm)"
    (project.root / ASSETS).parent.mkdir(parents=True)
    (project.root / ASSETS).symlink_to(REPO / ASSETS)


def test_the_data_docs_load_nothing_from_the_internet(project, capsys):
    """Their scripts, styles and fonts come from CDNs, so offline the pages showed no results: the stage copies
    them into the site from the pinned npm packages and points every page at the copies."""
    assert main(["prepare"]) == 0 and main(["validate"]) == 0
    assert "the Data Docs load 16 files from public CDNs" in capsys.readouterr().out  # not installed: said so
    with_assets(project)
    assert main(["validate"]) == 0
    assert "public CDNs" not in capsys.readouterr().out
    docs = project.outputs().validation / "data_docs"
    pages = list(docs.rglob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        text = page.read_text()
        assert not re.findall(
            r'(?:src|href)="https?://[^"]+\.(?:js|css)|cdn\.jsdelivr|great-expectations-web-assets', text
        )
        served = re.findall(r'(?:src|href)="([^"]*static/vendor/[^"]+)"', text)
        assert len(served) >= 14 and all((page.parent / ref).resolve().is_file() for ref in served), page
    assert list((docs / "static" / "vendor" / "@fortawesome" / "fontawesome-free" / "webfonts").glob("*.woff2"))


def test_every_cdn_file_the_data_docs_templates_name_is_served() -> None:
    """A great-expectations upgrade whose pages load a new file from a CDN fails here, not on an offline machine."""
    import great_expectations

    from sslops.adapters.expectations import CDN_FILES

    templates = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
    named = {
        url for t in templates.rglob("*.j2") for url in re.findall(r'(?:src|href)="(https?://[^"]+)"', t.read_text())
    }
    loaded = {url for url in named if "greatexpectations.io" not in url}  # links to click, not files to load
    assert loaded and loaded <= set(CDN_FILES), loaded - set(CDN_FILES)
    assert all((REPO / ASSETS / rel).is_file() for rel in CDN_FILES.values())
