"""`sslops report`'s part over pretraining seeds: bench/compare_methods.py's summary, formatted as the README's seeds
section, and what the report says when there is none for the default method."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sslops.commands.report import SEEDS, seeds_markdown, seeds_section
from sslops.config import Project

ROOT = Path(__file__).resolve().parents[1]

SUMMARY = {
    "method": "rotation",
    "seeds": [0, 1, 2],
    "draws": 5,
    "dataset": "Fashion-MNIST",
    "budgets": [
        {
            "name": "1 %",
            "best_pretrained": [0.8430, 0.8420, 0.8470],
            "best_scratch": [0.8277] * 3,
            "gain": [0.0153, 0.0143, 0.0193],
        },
        {"name": "100 %", "best_pretrained": [0.90] * 3, "best_scratch": [0.88] * 3, "gain": [0.02] * 3},
    ],
}


def test_the_summary_reads_as_the_readme_section() -> None:
    lines = seeds_markdown(SUMMARY).splitlines()
    assert lines[0].startswith("`rotation`, pretraining seeds 0, 1, 2: mean ± std over the seeds")
    assert "each seed's mean over 5 label draws" in lines[0] and "test split of Fashion-MNIST" in lines[0]
    assert lines[2:4] == ["| labels | best pretrained | best scratch | gain, best vs best |", "|---|---|---|---|"]
    assert lines[4] == "| 1 % | 84.40 % ± 0.26 | 82.77 % ± 0.00 | +1.63 ± 0.26 |"
    assert lines[5] == "| 100 % | 90.00 % ± 0.00 | 88.00 % ± 0.00 | +2.00 ± 0.00 |"
    one = {**SUMMARY, "budgets": [{"name": "1 %", "best_pretrained": [0.84], "best_scratch": [0.82], "gain": [0.02]}]}
    assert seeds_markdown(one).splitlines()[4] == "| 1 % | 84.00 % (1 of 3) | 82.00 % (1 of 3) | +2.00 (1 of 3) |"


def test_the_report_says_which_summary_it_has(tmp_path: Path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    project = Project(tmp_path)
    default = project.config("pretrain").method
    assert seeds_section(project).startswith("Over pretraining seeds: no summary yet")
    (tmp_path / SEEDS).parent.mkdir(parents=True)
    (tmp_path / SEEDS).write_text(json.dumps(SUMMARY | {"method": "other", "date": "2026-11-30"}))
    assert f"`other`'s, not the default `{default}`'s" in seeds_section(project)
    (tmp_path / SEEDS).write_text(json.dumps(SUMMARY | {"method": default, "date": "2026-11-30"}))
    section = seeds_section(project)
    assert (
        section.startswith(f"Over pretraining seeds ({SEEDS}, 2026-11-30):") and "| 1 % | 84.40 % ± 0.26 |" in section
    )
