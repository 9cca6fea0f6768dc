"""The image store written by several processes: the same bytes as one process writes, each part decoded in a
worker of its own, a file that fails in a worker named as if it failed here, and the prepare stage's `workers` knob."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import set_param, write_idx_dataset, write_imagefolder
from sslops.data import decode as store_module  # where the processes are started
from sslops.data import store
from sslops.data.formats import plan_dataset
from sslops.data.images import ImageRejected
from sslops.data.store import (
    IMAGES,
    MANIFEST,
    ImageStore,
    ManifestWriter,
    file_digest,
    manifest_digest,
    write_store,
)


def _load_noting_the_process(load, marks: Path) -> np.ndarray:
    """A part's own load, leaving the id of the process that ran it in `marks` (module level: a worker imports it)."""
    (marks / f"{os.getpid()}").touch()
    return load()


def _load_refused(path: Path) -> np.ndarray:
    raise ImageRejected(path, "not a readable image (truncated after planning)", "decode")


def _plan(root: Path):
    write_imagefolder(root, per_class=6, size=10, unlabeled=4)  # 2 x 24 labelled + 4 unlabeled files, one part each
    return plan_dataset("imagefolder", root, [], None, "unlabeled", 10**6)


def test_two_processes_write_the_store_one_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "IMAGES_PER_WORKER", 8)  # the tiny folder gets its two processes
    plan = _plan(tmp_path / "raw")
    marks = tmp_path / "marks"
    marks.mkdir()
    noted = dataclasses.replace(
        plan,
        parts=[
            dataclasses.replace(p, load=functools.partial(_load_noting_the_process, p.load, marks)) for p in plan.parts
        ],
    )
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    write_store(plan, one, progress=False, workers=1)
    write_store(noted, two, progress=False, workers=2)
    assert (one / IMAGES).read_bytes() == (two / IMAGES).read_bytes()
    assert (one / MANIFEST).read_bytes() == (two / MANIFEST).read_bytes()
    pids = {int(p.name) for p in marks.iterdir()}
    assert len(pids) == 2 and os.getpid() not in pids  # decoded in two other processes


def test_a_part_refused_in_a_worker_is_named_and_the_error_is_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "IMAGES_PER_WORKER", 8)
    plan = _plan(tmp_path / "raw")
    bad = tmp_path / "raw" / "train" / "broken.png"
    parts = list(plan.parts)
    parts[30] = dataclasses.replace(parts[30], load=functools.partial(_load_refused, bad))
    (tmp_path / "out").mkdir()
    with pytest.raises(ImageRejected) as info:
        write_store(dataclasses.replace(plan, parts=parts), tmp_path / "out", progress=False, workers=2)
    assert info.value.path == bad and info.value.kind == "decode" and "truncated after planning" in str(info.value)


def test_a_large_folder_is_planned_by_several_processes_alike(tmp_path, monkeypatch):
    """Headers read in two processes give the plan one process gives, and every unusable file is still named."""
    from sslops.data import imagefolder

    monkeypatch.setattr(store_module, "IMAGES_PER_WORKER", 8)
    monkeypatch.setattr(imagefolder, "HEADERS_PER_TASK", 5)
    root = tmp_path / "raw"
    write_imagefolder(root, per_class=6, size=10, unlabeled=4)
    one = plan_dataset("imagefolder", root, [], None, "unlabeled", 10**6, workers=1)
    two = plan_dataset("imagefolder", root, [], None, "unlabeled", 10**6, workers=2)
    assert [(p.source, p.shape, p.file) for p in one.parts] == [(p.source, p.shape, p.file) for p in two.parts]
    (root / "train" / "class1" / "empty.png").touch()
    (root / "unlabeled" / "notes.txt").write_text("not an image")
    with pytest.raises(ImageRejected, match="2 file") as info:
        plan_dataset("imagefolder", root, [], None, "unlabeled", 10**6, workers=2)
    assert "empty.png: empty" in str(info.value) and "notes.txt: not an image file" in str(info.value)


def test_every_reader_plans_parts_a_worker_can_receive(tmp_path):
    write_idx_dataset(tmp_path / "idx")
    for plan in (plan_dataset("idx", tmp_path / "idx", [], None, None, 10**6), _plan(tmp_path / "folder")):
        restored = pickle.loads(pickle.dumps(plan.parts))
        assert np.array_equal(restored[0].load(), plan.parts[0].load())


def test_small_plans_stay_in_this_process():
    per = store_module.IMAGES_PER_WORKER
    small = SimpleNamespace(parts=[None] * 100, total=per - 1)
    assert store_module.processes(small, 16) == 1  # starting a process would cost more than it saves
    big = SimpleNamespace(parts=[None] * 5000, total=2 * per + 1)
    assert store_module.processes(big, 16) == 2 and store_module.processes(big, 1) == 1
    assert store_module.processes(SimpleNamespace(parts=[None], total=10 * per), 16) == 1  # one part, one process


@pytest.mark.integration
def test_the_prepare_stage_decodes_with_its_workers_knob(project, monkeypatch):
    from sslops.cli import main

    monkeypatch.setattr(store_module, "IMAGES_PER_WORKER", 8)
    write_imagefolder(project.root / "data" / "folder", per_class=6, size=10, unlabeled=4)
    set_param(project.root, "prepare", "format", "imagefolder")
    set_param(project.root, "prepare", "root", "data/folder")
    set_param(project.root, "prepare", "classes", [])
    set_param(project.root, "prepare", "workers", 1)
    assert main(["prepare"]) == 0
    alone = (project.prepared_dir / IMAGES).read_bytes()
    set_param(project.root, "prepare", "workers", 2)
    assert main(["prepare"]) == 0
    assert json.loads((project.metrics_dir / "prepare.json").read_text())["workers"] == 2
    assert (project.prepared_dir / IMAGES).read_bytes() == alone


def test_the_manifest_streamed_in_row_groups_is_the_table_and_digest_of_one_write(tmp_path: Path, monkeypatch) -> None:
    """Chunk by chunk, the manifest file and the digest are what one DataFrame written at once would give."""
    raw = tmp_path / "raw"
    write_idx_dataset(raw, n_train=30, n_test=7)
    plan = plan_dataset("idx", raw, [], None, None, 10**6)
    monkeypatch.setattr(ManifestWriter, "CHUNK", 8)  # 37 rows: 5 row groups
    (tmp_path / "out").mkdir()
    written = write_store(plan, tmp_path / "out", progress=False)
    assert pq.ParquetFile(tmp_path / "out" / MANIFEST).metadata.num_row_groups > 1
    manifest = ImageStore.open(tmp_path / "out").manifest
    assert written.rows == len(manifest) == 37 and written.splits == {"train": 30, "test": 7}
    assert written.digest == manifest_digest(manifest)
    # Read back and hashed a few rows at a time, or a row group at a time from the file: the same digest.
    whole = hashlib.sha256(pd.util.hash_pandas_object(manifest, index=False).to_numpy().tobytes()).hexdigest()[:16]
    monkeypatch.setattr(store, "DIGEST_ROWS", 5)
    assert manifest_digest(manifest) == file_digest(tmp_path / "out" / MANIFEST) == whole == written.digest
