"""Outputs are replaced only when complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslops.outputs.atomic import atomic_dir, atomic_file, write_json


def test_atomic_dir_replaces_on_success(tmp_path: Path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_atomic_dir_keeps_old_on_failure(tmp_path: Path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "old.txt").read_text() == "old"


def test_atomic_file_keeps_old_on_failure(tmp_path: Path):
    target = tmp_path / "m.json"
    write_json(target, {"a": 1})
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
