"""Data-quality facts derived from the manifest with plain pandas, for the validation suite to judge.

Great Expectations checks columns row by row; duplicates within a split and test/train leakage are
relations between rows, so they are computed here into boolean columns the suite can then check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sslops.data.store import MANIFEST, PRETRAIN_SPLITS, read_manifest
from sslops.errors import SslopsError


def annotate(manifest: pd.DataFrame, pretrained: pd.Series | None = None) -> pd.DataFrame:
    """The manifest plus `row`, `duplicate_in_split` and `test_in_train` columns; with `pretrained` (the sha256s of
    the images the encoder was pretrained on) also `test_in_pretraining`: a downstream task's test image the encoder
    has already seen inflates its transfer results just as a train/test leak does.

    The relations are computed by Arrow on the hashes' own buffers: pandas' `duplicated` and `isin` turned every
    hash into a Python string first, 1.4 KB a row at their peak (a million images: the stage's largest cost)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    frame = manifest.copy(deep=False)  # the caller's frame keeps its columns; the data is shared, not copied
    keys = pa.Table.from_pandas(manifest[["split", "sha256"]], preserve_index=False)
    split, sha = keys["split"], keys["sha256"]
    rows = np.arange(len(frame))
    first = keys.append_column("row", pa.array(rows)).group_by(["split", "sha256"], use_threads=False)
    repeated = np.ones(len(frame), dtype=bool)
    repeated[first.aggregate([("row", "min")])["row_min"].to_numpy()] = False  # the first of each is no duplicate
    test = pc.equal(split, "test")

    def among(hashes: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Which rows are test images whose hash is one of `hashes`."""
        found = pc.and_(test, pc.is_in(sha, value_set=pa.chunked_array(hashes).combine_chunks()))
        return found.fill_null(False).to_numpy()

    frame.insert(0, "row", rows)
    frame["duplicate_in_split"] = repeated
    frame["test_in_train"] = among(pc.filter(sha, pc.equal(split, "train")))
    if pretrained is not None:
        frame["test_in_pretraining"] = among(pa.chunked_array([pa.array(pretrained, type=pa.string())]))
    return frame


def class_balance(manifest: pd.DataFrame, classes: list[str], split: str = "train") -> pd.DataFrame:
    """One row per declared class (and any undeclared one found): its count and share of `split`."""
    labels = manifest.loc[manifest["split"] == split, "class_name"].dropna()
    counts = labels.value_counts()
    names = list(classes) + sorted(set(counts.index) - set(classes))
    total = max(int(counts.sum()), 1)
    table = pd.DataFrame({"class_name": names, "count": [int(counts.get(n, 0)) for n in names]})
    table["share"] = table["count"] / total
    return table


def pretraining_hashes(prepared: Path) -> pd.Series:
    """sha256 of every image pretraining learns from (the pretraining store's train and unlabeled splits)."""
    path = prepared / MANIFEST
    if not path.is_file():  # a task is checked against what pretraining learns from, so that must be prepared
        raise SslopsError(f"{path} is missing: prepare the pretraining dataset first (dvc repro prepare).")
    manifest = read_manifest(path, columns=["split", "sha256"])
    return manifest.loc[manifest["split"].isin(PRETRAIN_SPLITS), "sha256"]
