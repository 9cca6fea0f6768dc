"""The frames the validate stage hands Great Expectations: per-row duplicate and leak flags, class balance."""

from __future__ import annotations

import hashlib
import sqlite3
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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


def test_the_sqlite_table_flags_the_rows_pandas_flags(tmp_path):
    """validate's SQLite table and the pandas annotation agree on many rows with repeats, leaks into train and into
    pretraining, and missing hashes; the manifest is read a row group at a time, once, and keeps its order."""
    rng = np.random.default_rng(0)
    n = 5_000
    sha = pd.Series([f"h{v}" for v in rng.integers(0, 3_000, n)], dtype="string").mask(rng.random(n) < 0.01)
    manifest = pd.DataFrame({"split": rng.choice(["train", "test", "unlabeled"], n), "sha256": sha})
    manifest["class_name"] = pd.Series(rng.choice(["a", "b"], n), dtype="string").mask(manifest["split"] == "unlabeled")
    pretraining = pd.DataFrame({"split": rng.choice(["train", "test"], 800), "sha256": [f"h{v}" for v in range(800)]})
    pq.write_table(pa.Table.from_pandas(manifest), tmp_path / "m.parquet", row_group_size=700)
    pretraining.to_parquet(tmp_path / "p.parquet")
    rows, digest = quality.manifest_table(tmp_path / "m.parquet", tmp_path / "m.db", tmp_path / "p.parquet")
    with sqlite3.connect(tmp_path / "m.db") as con:
        table = pd.read_sql(f"SELECT * FROM {quality.TABLE} ORDER BY rowid", con)
    expected = quality.annotate(manifest, pretraining.loc[pretraining["split"] == "train", "sha256"])
    assert rows == n and table["row"].tolist() == list(range(n))
    assert digest == store.file_digest(tmp_path / "m.parquet")  # hashed while loaded: the file is read once
    # pandas' isin matches a missing hash with a missing hash; SQL does not (a missing hash is no leak, and the
    # suite's not-null expectation on sha256 fails for it anyway)
    expected.loc[manifest["sha256"].isna().to_numpy(), ["test_in_train", "test_in_pretraining"]] = False
    for flag in ("duplicate_in_split", "test_in_train", "test_in_pretraining"):
        assert table[flag].astype(bool).tolist() == expected[flag].tolist(), flag
        assert 50 < expected[flag].sum() < n / 2, flag  # each case occurs, and not everywhere
    counts, per_class = quality.table_facts(tmp_path / "m.db", ["test_in_train"])
    assert counts == {"test_in_train": int(expected["test_in_train"].sum())}
    assert per_class.to_dict() == manifest.loc[manifest["split"] == "train", "class_name"].value_counts().to_dict()


def test_an_empty_manifest_makes_an_empty_table(tmp_path):
    """No row group at all: the table still has its columns, so the suite reports the row count, not a SQL error."""
    empty = pd.DataFrame({"split": [], "sha256": [], "class_name": []}, dtype="string")
    pq.ParquetWriter(tmp_path / "m.parquet", pa.Schema.from_pandas(empty, preserve_index=False)).close()
    assert pq.ParquetFile(tmp_path / "m.parquet").num_row_groups == 0
    assert quality.manifest_table(tmp_path / "m.parquet", tmp_path / "m.db") == (
        0,
        store.file_digest(tmp_path / "m.parquet"),
    )
    assert quality.table_facts(tmp_path / "m.db", ["duplicate_in_split", "test_in_train"])[0] == {
        "duplicate_in_split": 0,
        "test_in_train": 0,
    }


def test_hashing_a_manifest_holds_a_few_bytes_a_row(monkeypatch):
    """The manifest digest hashes a chunk of rows at a time: hashing a string column makes a Python string of each
    value (the whole table at once held 260 bytes a row that tracemalloc sees)."""
    n = 20_000
    rng = np.random.default_rng(0)
    hashes = [hashlib.sha256(i.to_bytes(4, "little")).hexdigest() for i in range(n)]
    manifest = pd.DataFrame({"split": rng.choice(["train", "test"], n), "sha256": hashes}, dtype="string")
    monkeypatch.setattr(store, "DIGEST_ROWS", 1_000)
    tracemalloc.start()
    try:
        store.manifest_digest(manifest)
        held = tracemalloc.get_traced_memory()[1] / n
    finally:
        tracemalloc.stop()
    assert held < 50, held
