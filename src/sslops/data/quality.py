"""Data-quality facts derived from the manifest with plain pandas, for the validation suite to judge.

Great Expectations checks columns row by row; duplicates within a split and test/train leakage are
relations between rows, so they are computed here into boolean columns the suite can then check.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sslops.data.store import MANIFEST, PRETRAIN_SPLITS
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
    manifest = pd.read_parquet(path, columns=["split", "sha256"])
    return manifest.loc[manifest["split"].isin(PRETRAIN_SPLITS), "sha256"]
