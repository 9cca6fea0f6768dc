"""The frames the validate stage hands Great Expectations: per-row duplicate and leak flags, class balance."""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pandas as pd

from sslops.data import quality, store


def test_annotate_flags_duplicates_and_leaks():
    manifest = pd.DataFrame({"split": ["train", "train", "train", "test", "test"], "sha256": ["a", "b", "a", "b", "c"]})
    frame = quality.annotate(manifest)
    assert frame["duplicate_in_split"].tolist() == [False, False, True, False, False]
    assert frame["test_in_train"].tolist() == [False, False, False, True, False]
    assert frame["row"].tolist() == [0, 1, 2, 3, 4]
    assert "test_in_pretraining" not in frame  # only a downstream task is checked against the pretraining images
    task = quality.annotate(manifest, pretrained=pd.Series(["c", "z"]))
    assert task["test_in_pretraining"].tolist() == [False, False, False, False, True]  # train images may overlap


def test_class_balance_lists_absent_declared_classes():
    manifest = pd.DataFrame({"split": ["train"] * 3 + ["test"], "class_name": ["a", "a", "b", "c"]})
    table = quality.class_balance(manifest, ["a", "b", "c"])
    assert table.to_dict("list") == {"class_name": ["a", "b", "c"], "count": [2, 1, 0], "share": [2 / 3, 1 / 3, 0.0]}


def test_annotate_agrees_with_pandas_on_many_rows():
    """The Arrow relations are pandas' `duplicated` and `isin`, on data with many repeats, leaks and missing hashes."""
    rng = np.random.default_rng(0)
    n = 5_000
    sha = pd.Series([f"h{v}" for v in rng.integers(0, 3_000, n)], dtype="string").mask(rng.random(n) < 0.01)
    manifest = pd.DataFrame({"split": rng.choice(["train", "test", "unlabeled"], n), "sha256": sha})
    pretrained = pd.Series([f"h{v}" for v in rng.integers(0, 3_000, 500)])
    frame = quality.annotate(manifest, pretrained)
    test = manifest["split"] == "test"
    train = manifest.loc[manifest["split"] == "train", "sha256"]
    assert (frame["duplicate_in_split"] == manifest.duplicated(["split", "sha256"])).all()
    assert (frame["test_in_train"] == (test & manifest["sha256"].isin(train).fillna(False))).all()
    assert (frame["test_in_pretraining"] == (test & manifest["sha256"].isin(pretrained).fillna(False))).all()
    assert frame["duplicate_in_split"].sum() > 1_000 and frame["test_in_train"].sum() > 100  # the cases occur
    assert list(manifest.columns) == ["split", "sha256"]  # the caller's frame is left as it was


def test_annotating_and_hashing_a_manifest_hold_a_few_bytes_a_row(monkeypatch):
    """What validate adds to the manifest it holds grows by bytes a row, not by a Python string per hash (the old
    annotate held 110 bytes a row that tracemalloc sees, the whole-table digest 260; with a million images, RSS
    showed 1.4 KB a row for annotate). Arrow's own buffers are not traced: the stage's benchmark measures RSS."""
    n = 20_000
    rng = np.random.default_rng(0)
    hashes = [hashlib.sha256(i.to_bytes(4, "little")).hexdigest() for i in range(n)]
    manifest = pd.DataFrame({"split": rng.choice(["train", "test"], n), "sha256": hashes}, dtype="string")
    monkeypatch.setattr(store, "DIGEST_ROWS", 1_000)
    quality.annotate(manifest.head(10), manifest["sha256"].head(2))  # first calls import and cache
    tracemalloc.start()
    try:
        quality.annotate(manifest, manifest["sha256"].head(100))
        annotate = tracemalloc.get_traced_memory()[1] / n
        tracemalloc.reset_peak()
        store.manifest_digest(manifest)
        digest = tracemalloc.get_traced_memory()[1] / n
    finally:
        tracemalloc.stop()
    assert annotate < 50 and digest < 50, (annotate, digest)
