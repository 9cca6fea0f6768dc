"""The scikit-learn digits export: a byte-identical, sha256-verified IDX folder, so its DVC md5 holds on any machine."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sslops.commands import digits
from sslops.data.idx import plan_idx, read_idx
from sslops.errors import SslopsError

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def _read(folder: Path) -> dict[str, np.ndarray]:
    return {name: read_idx(folder / name) for name in digits.FILES}


def test_export_has_the_documented_shapes_counts_and_split(tmp_path: Path):
    """Counts, shapes and the per-class split are what the module documents, and the readers accept the folder."""
    result = digits.export_digits(tmp_path / "digits")
    assert result["train"] == 1297 and result["test"] == 500 and result["classes"] == 10
    assert result["source"].startswith("scikit-learn ") and result["source"].endswith(" load_digits")
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == sorted(digits.FILES)

    a = _read(tmp_path / "digits")
    assert a["train-images-idx3-ubyte"].shape == (1297, 8, 8)
    assert a["t10k-images-idx3-ubyte"].shape == (500, 8, 8)
    assert np.bincount(a["t10k-labels-idx1-ubyte"], minlength=10).tolist() == [50] * 10
    train_counts = np.bincount(a["train-labels-idx1-ubyte"], minlength=10)
    assert len(train_counts) == 10 and train_counts.min() >= 120  # every class in both splits

    plan = plan_idx(tmp_path / "digits", [str(i) for i in range(10)])
    assert [(p.split, p.count, p.shape) for p in plan.parts] == [("train", 1297, (8, 8, 1)), ("test", 500, (8, 8, 1))]


def test_pixels_and_order_match_sklearn_exactly(tmp_path: Path):
    """Every image is scikit-learn's, scaled exactly by (v * 255 + 8) // 16, in original order within each split."""
    digits.export_digits(tmp_path)
    a = _read(tmp_path)
    source = sklearn_datasets.load_digits()
    values = source.images.astype(np.int64)
    test = digits.split_mask(source.target)
    expected = ((values * 255 + 8) // 16).astype(np.uint8)
    np.testing.assert_array_equal(a["train-images-idx3-ubyte"], expected[~test])
    np.testing.assert_array_equal(a["t10k-images-idx3-ubyte"], expected[test])
    np.testing.assert_array_equal(a["train-labels-idx1-ubyte"], source.target[~test])
    np.testing.assert_array_equal(a["t10k-labels-idx1-ubyte"], source.target[test])
    # Checked against exact rational rounding (half up), not the formula itself: 0 -> 0, 8 -> 128, 16 -> 255.
    scale = dict(zip(values[~test].ravel().tolist(), a["train-images-idx3-ubyte"].ravel().tolist(), strict=True))
    assert scale == {v: math.floor(Fraction(v * 255, 16) + Fraction(1, 2)) for v in scale}
    assert (scale[0], scale[8], scale[16]) == (0, 128, 255)


def test_test_split_is_spread_evenly_over_each_class():
    """The test images of a class are spaced about n/50 apart, so no stretch of writers is left out of either split."""
    labels = sklearn_datasets.load_digits().target
    test = digits.split_mask(labels)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        positions = np.flatnonzero(test[members])
        gaps = np.diff(positions)
        assert len(positions) == 50
        assert gaps.min() >= len(members) // 50 and gaps.max() <= -(-len(members) // 50)
        assert positions[0] <= len(members) // 50 and positions[-1] >= len(members) - 1 - len(members) // 50


def test_two_exports_are_byte_identical(tmp_path: Path):
    """The bytes depend only on the data: the property the committed DVC md5 relies on."""
    digits.export_digits(tmp_path / "a")
    digits.export_digits(tmp_path / "b")
    for name in digits.FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_second_export_leaves_verified_files_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Verified files are not rewritten (no mtime change for DVC to re-hash), and scikit-learn is not even loaded."""
    first = digits.export_digits(tmp_path)
    mtimes = {name: (tmp_path / name).stat().st_mtime_ns for name in digits.FILES}
    monkeypatch.setattr(digits, "_arrays", lambda: pytest.fail("verified files must not be exported again"))
    assert digits.export_digits(tmp_path) == first
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in digits.FILES} == mtimes


def test_tampered_file_is_replaced_by_a_fresh_export(tmp_path: Path):
    """A changed or missing file is not trusted: the export is re-run and the folder verifies again."""
    digits.export_digits(tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    (tmp_path / "unrelated.txt").write_text("kept")

    digits.export_digits(tmp_path)
    assert images.read_bytes() == good
    assert digits._verified(tmp_path)
    assert (tmp_path / "unrelated.txt").read_text() == "kept"


def test_changed_source_data_is_reported_and_nothing_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """If scikit-learn's bundled data ever differs from what FILES records, the export fails clearly and leaves
    neither unverified files in the target nor its temporary folder next to it."""
    monkeypatch.setitem(digits.FILES, "t10k-labels-idx1-ubyte", "0" * 64)
    target = tmp_path / "digits"
    with pytest.raises(SslopsError, match="t10k-labels-idx1-ubyte fails its sha256 check"):
        digits.export_digits(target)
    assert list(target.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]
