"""The prepare stage end to end (CLI in-process, real MLflow SQLite store) and its failure behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, mlflow_runs, set_param, write_imagefolder
from sslops.cli import main
from sslops.data.store import ImageStore

pytestmark = pytest.mark.integration  # every test runs the stage through the CLI, against a real MLflow store


def test_prepare_writes_store_manifest_metrics_and_mlflow_run(project, capsys):
    assert main(["prepare"]) == 0
    store = ImageStore.open(project.prepared_dir)
    assert store.images.shape == (100, 12, 12, 1) and store.images.dtype == np.uint8
    assert isinstance(store.images, np.memmap)
    m = store.manifest
    assert list(m["split"].value_counts().sort_index().items()) == [("test", 20), ("train", 80)]
    assert m["class_name"].iloc[1] == CLASSES[1] and m["label"].iloc[1] == 1
    assert m["sha256"].str.len().eq(64).all() and m["sha256"].is_unique
    np.testing.assert_allclose(m["mean"].iloc[3], store.images[3].mean(), rtol=1e-5)
    metrics = json.loads((project.metrics_dir / "prepare.json").read_text())
    assert metrics["images_train"] == 80 and metrics["images_test"] == 20

    (run,) = mlflow_runs(project.root)
    assert run.info.run_name == "prepare" and run.info.status == "FINISHED"
    assert run.data.params["prepare.format"] == "idx"
    assert run.data.tags["data.manifest_digest"] == metrics["manifest_digest"]
    assert {"git.commit", "git.dirty", "data.dvc_md5", "params.hash"} <= set(run.data.tags)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == metrics["manifest_digest"]
    assert (project.root / "mlflow" / "mlflow.db").is_file()


def test_prepare_imagefolder_keeps_unlabeled_rows(project):
    write_imagefolder(project.root / "data" / "shapes", per_class=2, unlabeled=3)
    set_param(project.root, "prepare", "format", "imagefolder")
    set_param(project.root, "prepare", "root", "data/shapes")
    assert main(["prepare"]) == 0
    m = ImageStore.open(project.prepared_dir).manifest
    unlabeled = m[m["split"] == "unlabeled"]
    assert len(unlabeled) == 3 and unlabeled["label"].isna().all() and unlabeled["class_name"].isna().all()
    assert m["source"].iloc[0] == "train/class0/0.png"


BAD_INPUTS = {
    "truncated IDX": (
        lambda d: (d / "train-images-idx3-ubyte").write_bytes((d / "train-images-idx3-ubyte").read_bytes()[:500]),
        (
            "train-images-idx3-ubyte: header declares shape (80, 12, 12) (11520 bytes of data), more than a file of "
            "500 bytes can hold: the file is truncated, corrupt or not an IDX file"
        ),
    ),
    "wrong magic": (
        lambda d: (d / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x09\x01" + b"\x00" * 30),
        "t10k-labels-idx1-ubyte: wrong IDX magic number",
    ),
    "short labels": (
        lambda d: (d / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x02\x00\x01"),
        "holds 2 labels but",
    ),
    "empty data dir": (lambda d: [p.unlink() for p in d.iterdir()], "data folder is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly_and_keeps_previous_output(project, capsys, case):
    assert main(["prepare"]) == 0
    before = (project.prepared_dir / "images.npy").read_bytes()
    damage, message = BAD_INPUTS[case]
    damage(project.root / "data" / "fashion-mnist")
    capsys.readouterr()
    assert main(["prepare"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (project.prepared_dir / "images.npy").read_bytes() == before
    leftovers = [p.name for p in project.prepared_dir.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert mlflow_runs(project.root)[0].info.status == "FAILED"


def test_unknown_format_in_params(project, capsys):
    set_param(project.root, "prepare", "format", "hdf5")
    assert main(["prepare"]) == 2
    err = capsys.readouterr().err
    assert "prepare.format in params.yaml: must be 'idx', 'imagefolder' or 'cifar10', got 'hdf5'" in err
    assert "Traceback" not in err


def test_cli_error_is_one_paragraph_without_traceback(project):
    set_param(project.root, "prepare", "root", "data/nowhere")
    out = subprocess.run([sys.executable, "-m", "sslops", "prepare"], capture_output=True, text=True, cwd=project.root)
    assert out.returncode == 2
    assert "sslops prepare: error:" in out.stderr and "data/nowhere: data folder does not exist" in out.stderr
    assert "Traceback" not in out.stderr
    assert not Path(project.prepared_dir).exists()
