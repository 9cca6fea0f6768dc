"""bench/dvc_queue.py's record of finished experiments, which outlives the clone that ran them, and the guard that
keeps a generated table from losing rows (no DVC queue here: `dvc exp show --json -A` output is given)."""

from __future__ import annotations

import json
import re
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
    good = '{"name": "method-a-s1", "baseline": "c", "params": {}, "metrics": {}}'
    record.path.write_text(f"{good}\n[1, 2]\n")
    with pytest.raises(SystemExit, match=r"sweep.jsonl:2 is not a recorded run"):
        record.runs()
    record.path.write_text(f'{good}\n{{"name": "method-a-s2"}}\n')  # a name, but nothing to build a row of
    with pytest.raises(SystemExit, match=r"sweep.jsonl:2 is not a recorded run"):
        record.runs()


BEGIN, END = "<!-- t:begin -->", "<!-- t:end -->"


def test_a_table_that_would_lose_rows_is_not_written_nor_any_other(tmp_path: Path) -> None:
    doc, other = tmp_path / "doc.md", tmp_path / "other.md"
    before = f"intro\n{BEGIN}\n| simclr | 0, 1, 2 | x |\n| moco | 0 | y |\n{END}\nafter\n"
    doc.write_text(before)
    other.write_text(f"{BEGIN}\nold\n{END}\n")
    smaller = "| simclr | 0 | x |\n| moco | 0, 1 (+1 pending) | y |"
    tables = [
        (other, BEGIN, END, "new", compare_methods.shown_seeds),
        (doc, BEGIN, END, smaller, compare_methods.shown_seeds),
    ]
    with pytest.raises(SystemExit, match=r"doc.md: \('simclr', 1\), \('simclr', 2\)"):
        dvc_queue.write_tables(tables, force=False)
    assert doc.read_text() == before
    assert other.read_text() == f"{BEGIN}\nold\n{END}\n"  # checked first, written only if every table may be

    larger = "| simclr | 0, 1, 2 | x |\n| moco | 0, 1 | y |"
    dvc_queue.write_tables([(doc, BEGIN, END, larger, compare_methods.shown_seeds)], force=False)
    assert doc.read_text() == f"intro\n{BEGIN}\n{larger}\n{END}\nafter\n"
    dvc_queue.write_tables(tables, force=True)
    assert smaller in doc.read_text() and "new" in other.read_text()


def test_a_name_finished_under_two_commits_is_recorded_once_as_its_newest_run(tmp_path: Path) -> None:
    """`dvc exp show -A` lists commits newest first: the newest run of a name wins, and reading again appends
    nothing (an older run must not flip the record back and forth)."""
    record = _record(tmp_path)
    shown = [
        {"rev": "b" * 10, "data": {}, "experiments": [_exp("method-a-s1", _data(1, 0.85))]},
        {"rev": "a" * 10, "data": {}, "experiments": [_exp("method-a-s1", _data(1, 0.84))]},
    ]
    record.merge(shown, r"method-.+")
    record.merge(shown, r"method-.+")
    lines = record.path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["metrics"][PRETRAIN] == {"knn_acc": 0.85}


def test_lever_rows_still_queued_are_not_rows_to_keep() -> None:
    text = "| default | x | abc (`rotation`) | 600 | a |\n| images-3x | y | abc (`rotation`) | queued | | |"
    assert gain_levers.shown_rows(text) == {("default", "abc (`rotation`)")}


def test_the_guards_read_the_committed_tables() -> None:
    """The row keys are parsed from the documents as the scripts wrote them: a format change that the parsers miss
    would disarm the guard, so they must find every method of docs/methods.md and the README's seeds."""
    methods = (ROOT / "docs" / "methods.md").read_text()
    table = methods.split(compare_methods.BEGIN)[1].split(compare_methods.END)[0]
    with_seeds = set(re.findall(r"^\| (\w+) \| \d", table, re.M))  # rows of finished runs; the rest not run yet
    assert {m for m, _ in compare_methods.shown_seeds(table)} == with_seeds and "rotation" in with_seeds
    readme = (ROOT / "README.md").read_text()
    seeds = compare_methods.shown_seeds(
        readme.split(compare_methods.SEEDS_BEGIN)[1].split(compare_methods.SEEDS_END)[0]
    )
    assert {("rotation", 0), ("rotation", 1), ("rotation", 2)} <= seeds
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    levers = gain_levers.shown_rows(benchmarks.split(gain_levers.BEGIN)[1].split(gain_levers.END)[0])
    assert {name for name, _ in levers} >= {"default", *gain_levers.LEVERS}


def test_the_readme_guard_follows_the_default_method() -> None:
    old = "`rotation`, pretraining seeds 0, 1, 2: mean ± std"
    new = "`simclr`, pretraining seeds 0: mean ± std"
    assert (
        compare_methods.shown_seeds(old, method="simclr") - compare_methods.shown_seeds(new, method="simclr") == set()
    )
    assert compare_methods.shown_seeds(old, method="rotation") == {("rotation", 0), ("rotation", 1), ("rotation", 2)}


def test_recorded_levers_of_a_commit_this_clone_lacks_have_no_default_row(tmp_path: Path) -> None:
    record = dvc_queue.Record(tmp_path / "levers.jsonl", params=(), metrics=(PRETRAIN,))
    line = {"name": "lever-images-3x", "baseline": "f" * 40, "params": {}, "metrics": {PRETRAIN: {"knn_acc": 0.87}}}
    record.path.write_text(json.dumps(line) + "\n")
    rows = gain_levers.rows(record.merge([{"rev": "workspace", "data": {}}], r"lever-.+"))
    assert [(r["name"], r["base"]) for r in rows] == [("images-3x", "fffffff (not in this clone)")]


def test_a_resumed_sweep_queues_only_runs_not_made_with_the_current_params() -> None:
    expected = {"pretrain": {"method": "dino", "seed": 1, "lr": 1.0e-3}, "finetune": {"crop_scale": (0.6, 1.0)}}
    made = {"sections": {"pretrain": {"method": "dino", "seed": 1, "lr": 0.001}, "finetune": {"crop_scale": [0.6, 1]}}}
    assert compare_methods.current(made, expected)
    assert compare_methods.current({"state": "queued"}, expected)
    older = {"sections": {**made["sections"], "finetune": {"crop_scale": [0.3, 1]}}}  # other recipes since
    assert not compare_methods.current(older, expected)
    assert not compare_methods.current({"sections": {"pretrain": made["sections"]["pretrain"]}}, expected)
    later = {**expected, "pretrain": {**expected["pretrain"], "decode_workers": None}}  # a knob added since, null
    assert compare_methods.current(made, later)
    assert not compare_methods.current(made, {**later, "pretrain": {**later["pretrain"], "decode_workers": 2}})


def _run(seed: int, amp: str, pretrained: float, machine: str = "CPU A") -> dict[str, Any]:
    """A finished sweep run as `compare_methods.runs()` gives it, fine-tuned with the committed headline protocols."""
    from sslops.config import Project

    finetune = Project(ROOT).config("finetune")
    evaluate = {
        "headline.frac_0.01.labels": 600,
        **{
            f"test.acc.frac_0.01.{finetune.headline_for('fashion-mnist', 'frac_0.01', init)}.{init}": acc
            for init, acc in (("pretrained", pretrained), ("scratch", 0.82))
        },
    }
    return {
        "name": f"method-dino-s{seed}",
        "params": {"seed": seed, "images": 318944},
        "sections": {"pretrain": {"seed": seed}, "finetune": {"draws": 4}},  # as the run was made (params.yaml: 3)
        "pretrain": {"amp": amp, "knn_acc": 0.84, "seconds": 200.0, "images_per_s": 1600.0, "machine": machine},
        "evaluate": evaluate,
    }


def test_runs_of_another_precision_are_never_averaged_with_the_committed_ones() -> None:
    from sslops.config import Project

    finetune = Project(ROOT).config("finetune")
    found = {
        ("dino", 0): _run(0, "bf16", 0.84),
        ("dino", 1): _run(1, "off", 0.80),
        ("dino", 2): _run(2, "bf16", 0.86),
        ("rotation", 0): _run(0, "off", 0.83),
    }
    rows = {
        line.split(" | ")[0].lstrip("| "): line for line in compare_methods.table(found, finetune, "bf16").splitlines()
    }
    assert "| dino | 0, 2 | CPU A, bf16 | 84.00 % ± 0.00 |" in rows["dino"] and "85.00 % ± 1.41" in rows["dino"]
    assert "| dino (off) | 1 | " in rows["dino (off)"] and "80.00 %" in rows["dino (off)"]
    assert "rotation (off)" in rows and "rotation" not in rows
    assert compare_methods.shown_seeds("\n".join(rows.values())) >= {("dino", 0), ("dino (off)", 1)}


def test_each_row_names_its_machine_and_runs_of_two_machines_are_two_rows() -> None:
    """Equal images make runs comparable across machines, but a row's times and images/s belong to one machine: the
    table keeps one row per machine and precision and says which."""
    from sslops.config import Project

    finetune = Project(ROOT).config("finetune")
    found = {("dino", 0): _run(0, "bf16", 0.84), ("dino", 1): _run(1, "bf16", 0.86, machine="CPU B")}
    found[("dino", 2)] = _run(2, "off", 0.80, machine="CPU B")
    dino = [line for line in compare_methods.table(found, finetune, "bf16").splitlines() if line.startswith("| dino")]
    expected = [["0", "CPU A, bf16"], ["1", "CPU B, bf16"], ["2", "CPU B, fp32"]]
    assert [line.split(" | ")[1:3] for line in dino] == expected


def test_the_seeds_summary_keeps_one_value_per_seed_of_the_committed_precision() -> None:
    from sslops.config import Project

    finetune = Project(ROOT).config("finetune")
    found = {("dino", 0): _run(0, "bf16", 0.84), ("dino", 1): _run(1, "off", 0.80), ("dino", 2): _run(2, "bf16", 0.86)}
    summary = compare_methods.seeds_summary(found, "dino", finetune, "bf16")
    assert summary is not None and summary["seeds"] == [0, 2]
    assert summary["draws"] == "4"  # the runs' own label draws, whatever params.yaml says today
    (budget,) = summary["budgets"]
    assert budget["labels"] == 600 and budget["best_pretrained"] == [0.84, 0.86]
    assert [round(g, 4) for g in budget["gain"]] == [0.02, 0.04]
    assert compare_methods.seeds_summary(found, "rotation", finetune, "bf16") is None


def test_a_sweep_queues_what_is_missing_and_the_table_budgets_only_for_other_methods() -> None:
    from sslops.config import Project

    project = Project(ROOT)
    default = project.config("pretrain").method
    other = next(m for m in compare_methods.METHODS if m != default)
    made = {"pretrain": dict(project.params["pretrain"], seed=0), "finetune": project.params["finetune"]}
    existing = {(default, 0): {"name": "HEAD (committed run)", "sections": made}}
    queue = compare_methods.queue_for(project, [(default, 0), (default, 1), (other, 1)], existing)
    assert list(queue) == [f"method-{default}-s1", f"method-{other}-s1"]  # seed 0 of the default is committed
    assert "tasks.fashion-mnist.budgets=[0.01,1.0]" not in queue[f"method-{default}-s1"]  # the README needs them all
    assert queue[f"method-{other}-s1"] == [
        "evaluate@fashion-mnist",
        *("-S", f"pretrain.method={other}", "-S", "pretrain.seed=1"),  # the same images as every method
        *("-S", "tasks.fashion-mnist.budgets=[0.01,1.0]"),
    ]
    assert len(compare_methods.queue_for(project, [(default, 0)], existing, rerun=True)) == 1
    full = compare_methods.queue_for(project, [(other, 1)], {}, all_budgets=True)
    assert not any("budgets" in a for a in full[f"method-{other}-s1"])


def test_a_value_some_runs_lack_says_how_many_runs_it_averages() -> None:
    """A run without the 1 % metric must not turn a mean over two seeds into one that reads as over all three."""
    from sslops.commands.report import seeds_markdown
    from sslops.config import Project

    finetune = Project(ROOT).config("finetune")
    found = {("dino", s): _run(s, "bf16", acc) for s, acc in ((0, 0.80), (1, 0.84), (2, 0.82))}
    found[("dino", 1)]["evaluate"] = {"headline.frac_0.01.labels": 600}  # evaluated without the 1 % budget
    (row,) = [line for line in compare_methods.table(found, finetune, "bf16").splitlines() if line.startswith("| dino")]
    assert "| 84.00 % ± 0.00 |" in row  # the kNN every run has: no count
    assert "| 81.00 % ± 1.41 (2 of 3) | 82.00 % ± 0.00 (2 of 3) | -1.00 ± 1.41 (2 of 3) |" in row
    summary = compare_methods.seeds_summary(found, "dino", finetune, "bf16")
    assert summary is not None and "81.00 % ± 1.41 (2 of 3)" in seeds_markdown(summary)
    assert "machines" not in seeds_markdown(summary)  # one machine: nothing to say
    found[("dino", 2)]["pretrain"]["machine"] = "CPU B"
    summary = compare_methods.seeds_summary(found, "dino", finetune, "bf16")
    assert summary is not None and summary["machines"] == ["CPU A", "CPU B"]
    assert "The seeds ran on 2 machines" in seeds_markdown(summary)


def test_the_ranking_puts_a_methods_seeds_together_across_machines_but_not_across_precisions() -> None:
    """At equal images a method's seeds from two machines are one sample (the per-machine table keeps their times
    apart); a run in another precision never joins it, and the higher mean gain ranks first."""
    from sslops.config import Project

    finetune = Project(ROOT).config("finetune")
    found = {("dino", 0): _run(0, "bf16", 0.84), ("dino", 1): _run(1, "bf16", 0.86, machine="CPU B")}
    found[("dino", 2)] = _run(2, "off", 0.99)
    found[("rotation", 0)] = {**_run(0, "bf16", 0.87), "name": "method-rotation-s0"}
    header, _, *rows = compare_methods.ranking(compare_methods.ranked(found, finetune, "bf16"), "bf16").splitlines()[2:]
    assert header.startswith("| method | seeds | machines | 1 %: gain")
    assert rows == [
        "| rotation | 0 | 1 | +5.00 | 84.00 % |  |",
        "| dino | 0, 1 | 2 | +3.00 ± 1.41 | 84.00 % ± 0.00 |  |",
    ]
    assert compare_methods.shown_seeds("\n".join(rows)) == {("rotation", 0), ("dino", 0), ("dino", 1)}


def test_the_gain_plot_draws_every_seed_of_each_ranked_method_best_at_the_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection

    from sslops.config import Project

    finetune = Project(ROOT).config("finetune")
    found = {("dino", s): _run(s, "bf16", acc) for s, acc in ((0, 0.83), (1, 0.85), (2, 0.84))}
    found[("rotation", 0)] = _run(0, "bf16", 0.87)
    ranks = compare_methods.ranked(found, finetune, "bf16")
    assert [method for method, _, _ in ranks] == ["rotation", "dino"]
    shown: list = []
    monkeypatch.setattr(plt, "close", shown.append)  # keep the figure to read it back: the plot closes it when saved
    compare_methods.plot_gains(ranks, tmp_path / "gain.png")
    assert (tmp_path / "gain.png").read_bytes().startswith(b"\x89PNG")
    (ax,) = shown[0].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dino", "rotation"]  # y grows upwards: best at the top
    dots = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(round(float(x), 2) for d in dots for x in d[:, 0]) == [1.0, 2.0, 3.0, 5.0]


def test_the_readme_says_why_the_default_is_the_default_and_the_ranking_agrees() -> None:
    """The README's reason for the default holds while the default leads the ranking that the sweep writes."""
    from sslops.config import Project

    assert "Rotation prediction is the default because" in (ROOT / "README.md").read_text()
    ranking = (ROOT / "docs" / "methods.md").read_text().split("Ranked by the 1 % gain")[1]
    first = re.search(r"^\| (\w+) \| [\d, ]+ \|", ranking, re.M)
    assert first is not None and first.group(1) == Project(ROOT).config("pretrain").method == "rotation"
