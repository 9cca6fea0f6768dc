"""bench/dvc_queue.py's record of finished experiments, which outlives the clone that ran them, and the guard that
keeps a generated table from losing rows (no DVC queue here: `dvc exp show --json -A` output is given)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import compare_methods  # noqa: E402  (scripts beside the package, importable once bench/ is on the path)
import dvc_queue  # noqa: E402
import gain_levers  # noqa: E402

PRETRAIN = "metrics/pretrain.json"


def _data(seed: int, knn: float) -> dict[str, Any]:
    """One revision as `dvc exp show --json` nests it, with parts the record must leave out."""
    return {
        "params": {"params.yaml": {"data": {"pretrain": {"seed": seed}, "finetune": {"epochs": 5}}}},
        "metrics": {PRETRAIN: {"data": {"knn_acc": knn}}, "metrics/other.json": {"data": {"x": 1}}},
        "deps": {"data/prepared": {"hash": "md5"}},
    }


def _shown(*experiments: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"rev": "workspace", "data": _data(0, 0.80)},
        {"rev": "c0ffee1234", "data": _data(0, 0.80), "experiments": list(experiments)},
    ]


def _exp(name: str, data: dict[str, Any], state: str | None = "success") -> dict[str, Any]:
    return {"executor": {"state": state} if state else None, "revs": [{"name": name, "data": data}]}


def _record(tmp_path: Path) -> dvc_queue.Record:
    return dvc_queue.Record(tmp_path / "sweep.jsonl", params=("pretrain",), metrics=(PRETRAIN,))


def _found(shown: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: entry for commit in shown for name, entry in dvc_queue._named(commit, r"method-.+")}


def test_finished_experiments_are_recorded_once_and_come_back_in_a_fresh_clone(tmp_path: Path) -> None:
    record = _record(tmp_path)
    live = _shown(_exp("method-a-s1", _data(1, 0.84)), _exp("method-a-s2", {}, state="queued"), _exp("x", {}))
    record.merge(live, r"method-.+")
    lines = [json.loads(line) for line in record.path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["method-a-s1"]  # the queued run and the other name are not recorded
    assert lines[0]["baseline"] == "c0ffee1234"
    assert lines[0]["params"] == {"pretrain": {"seed": 1}}  # only the sections asked for
    assert lines[0]["metrics"] == {PRETRAIN: {"knn_acc": 0.84}}
    assert {"machine", "date"} <= set(lines[0])

    text = record.path.read_text()
    record.merge(live, r"method-.+")
    assert record.path.read_text() == text  # nothing new: nothing appended

    fresh = record.merge(_shown(), r"method-.+")  # a clone without the experiment's git refs
    found = _found(fresh)
    assert found["method-a-s1"]["baseline"] == "c0ffee1234"
    assert dvc_queue.metrics_of(found["method-a-s1"]["data"], PRETRAIN) == {"knn_acc": 0.84}
    assert compare_methods._metrics(found["method-a-s1"]["data"])["params"] == {"seed": 1}


def test_a_rerun_with_other_figures_is_appended_and_wins(tmp_path: Path) -> None:
    record = _record(tmp_path)
    record.merge(_shown(_exp("method-a-s1", _data(1, 0.84))), r"method-.+")
    record.merge(_shown(_exp("method-a-s1", _data(1, 0.85))), r"method-.+")
    assert len(record.path.read_text().splitlines()) == 2
    assert record.runs()["method-a-s1"]["metrics"][PRETRAIN] == {"knn_acc": 0.85}


def test_a_live_experiment_wins_over_its_record_and_an_unknown_baseline_gets_its_own_entry(tmp_path: Path) -> None:
    record = _record(tmp_path)
    line = {"name": "method-a-s1", "baseline": "gone", "params": {}, "metrics": {PRETRAIN: {"knn_acc": 0.1}}}
    record.path.write_text(json.dumps(line) + "\n")
    merged = record.merge(_shown(_exp("method-a-s1", {}, state="running")), r"method-.+")
    assert _found(merged) == {"method-a-s1": {"state": "running"}}

    merged = record.merge(_shown(), r"method-.+")
    assert merged[-1]["rev"] == "gone" and merged[-1]["data"] == {}
    assert _found(merged)["method-a-s1"]["baseline"] == "gone"


def test_a_broken_record_line_is_named(tmp_path: Path) -> None:
    record = _record(tmp_path)
    record.path.write_text('{"name": "method-a-s1", "baseline": "c", "params": {}, "metrics": {}}\n[1, 2]\n')
    with pytest.raises(SystemExit, match=r"sweep.jsonl:2 is not a recorded run"):
        record.runs()


BEGIN, END = "<!-- t:begin -->", "<!-- t:end -->"


def test_a_table_that_would_lose_rows_is_not_written(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    before = f"intro\n{BEGIN}\n| simclr | 0, 1, 2 | x |\n| moco | 0 | y |\n{END}\nafter\n"
    doc.write_text(before)
    smaller = "| simclr | 0 | x |\n| moco | 0, 1 (+1 pending) | y |"
    with pytest.raises(SystemExit, match=r"would lose \('simclr', 1\), \('simclr', 2\)"):
        dvc_queue.write_table(doc, BEGIN, END, smaller, compare_methods.shown_seeds, force=False)
    assert doc.read_text() == before

    larger = "| simclr | 0, 1, 2 | x |\n| moco | 0, 1 | y |"
    dvc_queue.write_table(doc, BEGIN, END, larger, compare_methods.shown_seeds, force=False)
    assert doc.read_text() == f"intro\n{BEGIN}\n{larger}\n{END}\nafter\n"
    dvc_queue.write_table(doc, BEGIN, END, smaller, compare_methods.shown_seeds, force=True)
    assert smaller in doc.read_text()


def test_the_guards_read_the_committed_tables() -> None:
    """The row keys are parsed from the documents as the scripts wrote them: a format change that the parsers miss
    would disarm the guard, so they must find every method of docs/methods.md and the README's seeds."""
    methods = (ROOT / "docs" / "methods.md").read_text()
    shown = compare_methods.shown_seeds(methods.split(compare_methods.BEGIN)[1].split(compare_methods.END)[0])
    assert {m for m, _ in shown} == set(compare_methods.METHODS)
    readme = (ROOT / "README.md").read_text()
    seeds = compare_methods.shown_seeds(
        readme.split(compare_methods.SEEDS_BEGIN)[1].split(compare_methods.SEEDS_END)[0]
    )
    assert len(seeds) >= 1
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    levers = gain_levers.shown_rows(benchmarks.split(gain_levers.BEGIN)[1].split(gain_levers.END)[0])
    assert {name for name, _ in levers} >= {"default", *gain_levers.LEVERS}
