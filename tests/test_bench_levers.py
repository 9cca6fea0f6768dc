"""bench/gain_levers.py's table: every lever beside the committed run it was queued from, never beside a later one
(no DVC queue here: `dvc exp show --json -A` output is given)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gain_levers  # noqa: E402  (a script beside the package, importable once bench/ is on the path)

EVALUATE = "metrics/tasks/fashion-mnist/evaluate.json"


def _data(method: str, pretrained: float, knn: float) -> dict[str, Any]:
    """One revision's params and metrics as `dvc exp show --json` nests them."""
    headline = {
        "headline.frac_0.01.labels": 600,
        "headline.frac_0.01.best_pretrained": pretrained,
        "headline.frac_0.01.best_pretrained_protocol": "finetune",
        "headline.frac_0.01.best_scratch": 0.8277,
        "headline.frac_0.01.best_scratch_protocol": "finetune",
        "headline.frac_0.01.gain_vs_best_scratch": pretrained - 0.8277,
        "headline.frac_1.labels": 60000,
        "headline.frac_1.best_pretrained": 0.99,  # not the smallest budget: never shown
    }
    return {
        "params": {"params.yaml": {"data": {"pretrain": {"method": method}}}},
        "metrics": {EVALUATE: {"data": headline}, "metrics/pretrain.json": {"data": {"knn_acc": knn, "seconds": 300}}},
    }


def _exp(name: str, data: dict[str, Any], state: str | None = "success") -> dict[str, Any]:
    return {"executor": {"state": state} if state else None, "revs": [{"name": name, "data": data}]}


SHOWN = [  # newest commit first, as `dvc exp show -A` lists them
    {"rev": "workspace", "data": _data("rotation", 0.8430, 0.8568)},  # no levers: no block
    {
        "rev": "bbbbbbbbbb",
        "data": _data("rotation", 0.8430, 0.8568),
        "experiments": [
            _exp("lever-images-3x", _data("rotation", 0.8510, 0.8700)),
            _exp("lever-distill", {}, state="queued"),
            _exp("method-rotation-s1", _data("rotation", 0.8400, 0.8600)),  # not a lever
        ],
    },
    {
        "rev": "aaaaaaaaaa",
        "data": _data("simclr", 0.8354, 0.8427),
        "experiments": [_exp("lever-images-3x", _data("simclr", 0.8396, 0.8482))],
    },
]


def test_each_lever_sits_under_the_commit_it_ran_from() -> None:
    rows = gain_levers.rows(SHOWN)
    assert [(r["name"], r["base"]) for r in rows] == [
        ("default", "bbbbbbb (`rotation`)"),
        ("distill", "bbbbbbb (`rotation`)"),  # LEVERS' order, not the queue's
        ("images-3x", "bbbbbbb (`rotation`)"),
        ("default", "aaaaaaa (`simclr`)"),
        ("images-3x", "aaaaaaa (`simclr`)"),
    ]
    assert rows[1] == {"name": "distill", "base": "bbbbbbb (`rotation`)", "state": "queued"}
    assert rows[2]["headline"]["best_pretrained"] == 0.8510  # the rotation run's, not the SimCLR run's same name
    assert rows[4]["headline"]["best_pretrained"] == 0.8396


def test_the_table_shows_the_smallest_budget_and_the_queue_state() -> None:
    lines = gain_levers.table(gain_levers.rows(SHOWN)).splitlines()
    assert len(lines) == 2 + 5
    assert lines[2].startswith("| default | nothing: the committed run | bbbbbbb (`rotation`) | 600 | 84.30 % ")
    assert "| +2.33 |" in lines[4] and "| 87.00 % | 300 s |" in lines[4]
    assert lines[3].startswith("| distill |") and "| queued |" in lines[3]
    assert "99.00" not in "\n".join(lines)
