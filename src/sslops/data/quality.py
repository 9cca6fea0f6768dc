"""Data-quality facts derived from a manifest, for the validation suite to judge.

Great Expectations checks columns row by row; duplicates within a split and test/train leakage are
relations between rows, so they are computed here into boolean columns the suite can then check. A prepared
store's manifest goes into a SQLite table for that (`manifest_table`), so that validate holds no row of it in memory
whatever the number of images; the small tables of a dense task stay in pandas (`annotate`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from sslops.data.store import MANIFEST, PRETRAIN_SPLITS, ManifestDigest, read_manifest
from sslops.errors import SslopsError


def annotate(manifest: pd.DataFrame, pretrained: pd.Series | None = None) -> pd.DataFrame:
    """The manifest plus `row`, `duplicate_in_split` and `test_in_train` columns; with `pretrained` (the sha256s of
    the images the encoder was pretrained on) also `test_in_pretraining`: a downstream task's test image the encoder
    has already seen inflates its transfer results just as a train/test leak does."""
    frame = manifest.copy()
    frame.insert(0, "row", range(len(frame)))
    frame["duplicate_in_split"] = frame.duplicated(["split", "sha256"], keep="first")
    train_hashes = frame.loc[frame["split"] == "train", "sha256"]
    frame["test_in_train"] = (frame["split"] == "test") & frame["sha256"].isin(train_hashes)
    if pretrained is not None:
        frame["test_in_pretraining"] = (frame["split"] == "test") & frame["sha256"].isin(pretrained)
    return frame


def class_balance(manifest: pd.DataFrame, classes: list[str], split: str = "train") -> pd.DataFrame:
    """One row per declared class (and any undeclared one found): its count and share of `split`."""
    return balance(manifest.loc[manifest["split"] == split, "class_name"].dropna().value_counts(), classes)


def balance(counts: pd.Series, classes: list[str]) -> pd.DataFrame:
    """The class-balance table from images per class name: every declared class, then any undeclared one found."""
    names = list(classes) + sorted(set(counts.index) - set(classes))
    total = max(int(counts.sum()), 1)
    table = pd.DataFrame({"class_name": names, "count": [int(counts.get(n, 0)) for n in names]})
    table["share"] = table["count"] / total
    return table


TABLE = "manifest"  # the annotated manifest's table in the database `manifest_table` writes


def manifest_table(manifest: Path, db: Path, pretrained: Path | None = None) -> tuple[int, str]:
    """Write a manifest file into table TABLE of the SQLite file `db`, one row group at a time, with the columns
    `annotate` adds computed by SQLite (a window over split and sha256 for the duplicates, a lookup of the train
    split's or the pretraining manifest's hashes for the leaks); return its rows and its digest (`file_digest`'s,
    hashed while it is loaded, so the file is read once). SQLite sorts on disk with a page cache of its own, so
    memory does not grow with the rows (pandas held about 1 KB a row, and GX as much again)."""
    con = sqlite3.connect(db)
    try:
        con.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -65536;")
        digest = ManifestDigest()
        rows = _load(con, "raw", pq.ParquetFile(manifest), with_row=True, digest=digest)
        leaks = (
            "IFNULL(split = 'test' AND sha256 IN (SELECT sha256 FROM raw WHERE split = 'train'), 0) AS test_in_train"
        )
        if pretrained is not None:
            groups = pq.ParquetFile(pretrained)
            _load(con, "pretrained", groups, columns=["split", "sha256"])
            seen = ", ".join(f"'{split}'" for split in PRETRAIN_SPLITS)
            leaks += (
                ", IFNULL(split = 'test' AND sha256 IN (SELECT sha256 FROM pretrained WHERE split IN "
                f"({seen})), 0) AS test_in_pretraining"
            )
        con.execute(
            f"CREATE TABLE {TABLE} AS SELECT *, ROW_NUMBER() OVER (PARTITION BY split, sha256 ORDER BY row) > 1 "
            f"AS duplicate_in_split, {leaks} FROM raw ORDER BY row"
        )
        con.executescript("DROP TABLE raw; DROP TABLE IF EXISTS pretrained;")
        con.commit()
    finally:
        con.close()
    return rows, digest.hexdigest()


def _load(
    con: sqlite3.Connection,
    table: str,
    groups: pq.ParquetFile,
    columns: list[str] | None = None,
    with_row: bool = False,
    digest: ManifestDigest | None = None,
) -> int:
    """Append every row group of a Parquet file to `table` (created from the first, or from the schema when there is
    none: an empty manifest then fails the suite's row count, not SQL); with `with_row`, each row's position as
    column `row` first; each row group, as read, into `digest`. Returns the rows."""
    rows = 0
    empty = groups.schema_arrow.empty_table().select(columns or groups.schema_arrow.names)
    for i in range(groups.num_row_groups or 1):
        chunk = (groups.read_row_group(i, columns=columns) if groups.num_row_groups else empty).to_pandas()
        if digest is not None:
            digest.update(chunk)
        if with_row:
            chunk.insert(0, "row", np.arange(rows, rows + len(chunk)))
        chunk.to_sql(table, con, if_exists="append", index=False)
        rows += len(chunk)
    return rows


def table_facts(db: Path, flags: list[str], split: str = "train") -> tuple[dict[str, int], pd.Series]:
    """From `manifest_table`'s table: how many rows each of `flags` marks, and `split`'s images per class name."""
    con = sqlite3.connect(db)
    try:
        sums = con.execute(f"SELECT {', '.join(f'IFNULL(SUM({f}), 0)' for f in flags)} FROM {TABLE}").fetchone()
        counts = con.execute(
            f"SELECT class_name, COUNT(*) FROM {TABLE} WHERE split = ? AND class_name IS NOT NULL GROUP BY class_name",
            (split,),
        ).fetchall()
    finally:
        con.close()
    return dict(zip(flags, map(int, sums), strict=True)), pd.Series(dict(counts), dtype="int64")


def pretraining_manifest(prepared: Path) -> Path:
    """The pretraining store's manifest, which a task's test images are checked against; it must be prepared."""
    path = prepared / MANIFEST
    if not path.is_file():  # a task is checked against what pretraining learns from, so that must be prepared
        raise SslopsError(f"{path} is missing: prepare the pretraining dataset first (dvc repro prepare).")
    return path


def pretraining_hashes(prepared: Path) -> pd.Series:
    """sha256 of every image pretraining learns from (the pretraining store's train and unlabeled splits)."""
    manifest = read_manifest(pretraining_manifest(prepared), columns=["split", "sha256"])
    return manifest.loc[manifest["split"].isin(PRETRAIN_SPLITS), "sha256"]
