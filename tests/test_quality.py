"""The frames the validate stage hands Great Expectations: per-row duplicate and leak flags, class balance."""

from __future__ import annotations

import pandas as pd

from sslops.data import quality


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
