"""The augment stage on tiny data: the view cache's metrics and preview, and its refusal of unvalidated data."""

from __future__ import annotations

import json

import pytest

from conftest import mlflow_runs, set_param
from sslops.cli import main

pytestmark = pytest.mark.integration  # every test runs stages through the CLI, against a real MLflow store


def test_augment_writes_cache_metrics_preview_and_run(project):
    set_param(project.root, "augment", "views", 4)
    assert main(["prepare"]) == 0 and main(["validate"]) == 0 and main(["augment"]) == 0
    augment = json.loads((project.metrics_dir / "augment.json").read_text())
    assert augment == {**augment, "views": 4, "images": 80, "bytes_per_view": 144, "cache_bytes": 80 * 4 * 144}
    assert (project.root / "plots" / "augment_pairs.png").stat().st_size > 1000
    assert len(list((project.root / "artifacts" / "augment").glob("shard-*.npy"))) == 1
    run = next(r for r in mlflow_runs(project.root) if r.info.run_name == "augment")
    assert run.info.status == "FINISHED" and run.data.params["augment.views"] == "4"


def test_augment_refuses_data_that_did_not_pass_validation(project, capsys):
    assert main(["prepare"]) == 0
    assert main(["augment"]) == 2
    assert "has not passed validation" in capsys.readouterr().err
    assert main(["validate"]) == 0 and main(["augment"]) == 0
    set_param(project.root, "validate", "min_rows", 10**6)
    assert main(["validate"]) == 1  # a failed validation withdraws the earlier pass
    assert not project.validated_marker.exists()
    assert main(["augment"]) == 2
