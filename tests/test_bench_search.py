"""bench/finetune_search.py's choices from held-out scores: the recipe per init, then the headline protocol, written
into params.yaml without touching anything else (no DVC queue here: the scores are given)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import finetune_search  # noqa: E402  (a script beside the package, importable once bench/ is on the path)

from sslops.errors import SslopsError  # noqa: E402

TRIALS = ["base", "long"]


def _scores(key: str, acc: float, prefix: str = "acc") -> dict[str, float]:
    return {f"holdout.{prefix}.{key}": acc, f"holdout.{prefix}_std.{key}": 0.01}


FOUND = {  # trial -> task -> its finetune metrics, as a recipe experiment writes them
    "base": {
        "digits": {
            **_scores("per_class_10.pretrained", 0.80),
            **_scores("per_class_10.scratch", 0.85),
            **_scores("per_class_10.pretrained", 0.90, "linear_acc"),  # beats the chosen fine-tuning (0.82)
            **_scores("per_class_10.scratch", 0.85, "linear_acc"),  # ties with it: fine-tuning stays
            "seconds": 10.0,
        }
    },
    "long": {
        "digits": {
            **_scores("per_class_10.pretrained", 0.82),
            **_scores("per_class_10.scratch", 0.84),
            "seconds": 20.0,
        }
    },
}


def test_the_search_chooses_recipes_then_whether_the_probe_or_fine_tuning_is_the_headline():
    chosen = finetune_search.choose(FOUND, TRIALS)
    assert chosen == {"digits": {"per_class_10": {"pretrained": "long", "scratch": "base"}}}
    protocols = finetune_search.headline(FOUND, chosen, TRIALS)
    assert protocols == {"digits": {"per_class_10": {"pretrained": "linear", "scratch": "finetune"}}}
    table = finetune_search.table(FOUND, chosen, protocols, TRIALS).splitlines()
    assert table[4] == "| `base` | 80.00 ± 1.00 | ★ **85.00 ± 1.00** | 10.0 |"
    assert table[5] == "| `long` | **82.00 ± 1.00** | 84.00 ± 1.00 | 20.0 |"
    assert table[6] == "| linear probe | ★ 90.00 ± 1.00 | 85.00 ± 1.00 | |"


def test_without_probe_scores_no_headline_is_declared():
    """Runs of the search from before it scored the probe leave finetune.headline empty (fine-tuning everywhere)."""
    older = {t: {"digits": {k: v for k, v in m["digits"].items() if "linear" not in k}} for t, m in FOUND.items()}
    assert finetune_search.headline(older, finetune_search.choose(older, TRIALS), TRIALS) == {}


def test_writing_the_choices_keeps_every_other_line_and_refuses_an_invalid_result(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.setattr(finetune_search, "ROOT", tmp_path)
    finetune_search.write_params("headline", {})  # none declared: the one-line form, whatever the repository has
    before = (tmp_path / "params.yaml").read_text().splitlines()
    assert sum(line.startswith("  headline: {}  ") for line in before) == 1
    finetune_search.write_params("headline", {"digits": {"per_class_10": {"pretrained": "linear"}}})
    after = (tmp_path / "params.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(after) if line.startswith("  headline:"))
    assert after[at].startswith("  headline:  ") and "# per task, budget and init" in after[at]
    end = next(i for i in range(at + 1, len(before)) if not before[i].lstrip().startswith("#"))  # its comment's end
    assert after[end : end + 2] == ["    digits:", "      per_class_10: {pretrained: linear}"]
    assert after == [*before[:at], after[at], *before[at + 1 : end], *after[end : end + 2], *before[end:]]
    finetune_search.write_params("headline", {})  # back to none
    assert (tmp_path / "params.yaml").read_text().splitlines() == before
    with pytest.raises(SslopsError, match="headline.digits.per_class_10.pretrained is 'distill'"):
        finetune_search.write_params("headline", {"digits": {"per_class_10": {"pretrained": "distill"}}})
    assert (tmp_path / "params.yaml").read_text().splitlines()[at].startswith("  headline: {}")  # left as it was


def test_a_fresh_clone_chooses_from_the_results_file_where_a_trial_and_the_encoder_are_unchanged(tmp_path, monkeypatch):
    """Without a search now, the results file's scores stand in for a trial only while its definition and the
    encoder are the ones they were measured with, and keep their date; a trial searched now takes its new scores."""
    base = {"optimizer": "adamw", "lr": 0.001, "crop_scale": (0.6, 1.0)}  # a tuple, as Trial.record() may give
    sources = {t: {"encoder_sha256": "e1", "date": "2026-11-29", "machine": "m"} for t in TRIALS}
    recorded = {"trials": {"base": {**base, "crop_scale": [0.6, 1.0]}, "long": {**base, "epochs": 60}}}
    (tmp_path / "finetune_search-m.json").write_text(json.dumps(recorded | {"scores": FOUND, "sources": sources}))
    monkeypatch.setattr(finetune_search, "RESULTS", tmp_path)
    now = {"base": base, "long": {**base, "epochs": 120}}
    found, used = finetune_search.scores("m", now, ["digits"], encoder="e1")
    assert found["base"] == FOUND["base"] and used["base"]["date"] == "2026-11-29"
    assert found["long"] == {"digits": {}}  # redefined since: its old scores would choose for another recipe
    found, used = finetune_search.scores("m", now, ["digits"], encoder="e2")  # another encoder: nothing stands in
    assert found["base"] == {"digits": {}} and used == {}
    fresh = {"long": {"digits": {"holdout.acc.per_class_10.pretrained": 0.9}}}
    found, used = finetune_search.scores("m", now, ["digits"], encoder="e2", searched=fresh)
    assert found["long"] == fresh["long"] and used["long"]["encoder_sha256"] == "e2" and found["base"] == {"digits": {}}
