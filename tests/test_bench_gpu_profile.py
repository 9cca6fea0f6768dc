"""bench/gpu_profile.py: both roles of a tiny CPU run write every result as it comes, and the summary's gain is best
against best with the scratch side chosen on held-out labels, never the one that did best on test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO, small_params, write_idx_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_profile  # noqa: E402  (a script beside the package, importable once bench/ is on the path)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_both_roles_record_the_search_the_choice_and_a_test_figure_per_draw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_idx_dataset(tmp_path / "data", n_train=800, n_test=40, size=28)
    (tmp_path / "params.yaml").write_text(small_params((REPO / "params.yaml").read_text()))  # seconds-long recipes
    common = ["--profile", "cpu", "--params", str(tmp_path / "params.yaml"), "--data", str(tmp_path / "data")]
    common += ["--device", "cpu", "--epochs", "1"]
    runs = {  # the pretrained side searches two trials (one of them LP-FT); the scratch side fits one trial alone
        "pretrained": ["--batch-size", "64", "--search-trials", "base,lpft"],
        "scratch": ["--trial", "lr3e-3"],
    }
    for role, extra in runs.items():
        argv = ["gpu_profile.py", "--role", role, *common, *extra, "--out", str(tmp_path / f"{role}.jsonl")]
        monkeypatch.setattr(sys, "argv", argv)
        gpu_profile.main()
    pretrained, scratch = _lines(tmp_path / "pretrained.jsonl"), _lines(tmp_path / "scratch.jsonl")
    for lines in (pretrained, scratch):
        assert lines[0]["kind"] == "setup" and lines[0]["profile"] == "cpu" and lines[-1]["kind"] == "done"
        assert [line["draw"] for line in lines if line.get("protocol") == "linear"] == [0, 1, 2]
    assert {line["kind"] for line in pretrained} >= {"pretrain", "chosen"}
    assert "pretrain" not in {line["kind"] for line in scratch}
    held = [line for line in pretrained if line["kind"] == "holdout"]
    assert {(line["trial"], line["draw"]) for line in held} == {(t, d) for t in ("base", "lpft") for d in range(3)}
    chosen = next(line for line in pretrained if line["kind"] == "chosen")["trial"]
    finals = [line for line in pretrained if line["kind"] == "test" and line.get("trial") == chosen]
    assert sorted(line["draw"] for line in finals) == [0, 1, 2]
    only = [line for line in scratch if line["kind"] == "test" and line["protocol"] == "finetune"]
    assert [(line["trial"], line["draw"]) for line in only] == [("lr3e-3", d) for d in range(3)]
    summary = gpu_profile.summarize([tmp_path / "pretrained.jsonl", tmp_path / "scratch.jsonl"])
    assert "| pretrained.jsonl | pretrained | cpu (small_cnn) | rotation, seed 0, 1 epochs | linear |" in summary
    assert summary.endswith("No scratch run searched its recipe on held-out labels: no gain to report.")


def _process(role: str, chosen: str, held_out: float, test: list[float], epochs: int | None = None) -> list[dict]:
    lines = [{"role": role, "kind": "setup", "profile": "cpu"}]
    if epochs:
        lines.append({"role": role, "kind": "pretrain", "method": "rotation", "seed": 0, "epochs": epochs})
    lines.append({"role": role, "kind": "chosen", "trial": chosen, "holdout_means": {chosen: held_out}})
    tests = [{"kind": "test", "protocol": "finetune", "trial": chosen, "draw": d, "acc": a} for d, a in enumerate(test)]
    return lines + [{"role": role, **t} for t in tests]


def test_the_best_scratch_is_the_one_best_on_held_out_labels_not_on_test(tmp_path: Path) -> None:
    records = {
        "a.jsonl": _process("scratch", "base", 0.90, [0.70, 0.70]),  # best on held-out labels
        "b.jsonl": _process("scratch", "long", 0.80, [0.95, 0.95]),  # best on test: must not be picked
        "c.jsonl": _process("pretrained", "base", 0.90, [0.80, 0.80], epochs=5),
    }
    for name, lines in records.items():
        (tmp_path / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = gpu_profile.summarize([tmp_path / name for name in records])
    assert "trial base: 70.00 ± 0.00 % on test" in summary
    assert "| cpu (small_cnn) | rotation | 5 | base | 1 | +10.00 |" in summary
