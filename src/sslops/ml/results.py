"""Transfer results as rows: how label budgets are named and what the headline compares (numpy-free, torch-free).

One row per (budget, draw, init, protocol) with its test scores, aggregated over a budget's label draws; shared by
the evaluate stage, `sslops report` and the flow summary, so a budget is spelled `frac_0.01` (a fraction of the
labelled train split) or `per_class_10` ("10/class" in params.yaml) in one place only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

INITS = ("pretrained", "scratch", "pixels")  # pixels: the task's prepared pixels as features (no fine-tuning)
PROTOCOLS = ("linear", "knn", "finetune", "distill")  # distill: at the budgets of finetune.distill only
# A detection or segmentation task's test metrics; the first ranks its recipe trials and makes its headline gain.
DENSE_METRICS = {"detection": ("map", "map_50"), "segmentation": ("miou",)}


def parse_budget(budget: float | str) -> tuple[float | None, int | None]:
    """(fraction, None) for a fraction of the labels, (None, n) for "n/class"."""
    if isinstance(budget, str):
        return None, int(budget.removesuffix("/class"))
    return float(budget), None


def budget_key(budget: float | str) -> str:
    """The name of a label budget in metrics, run names and files: `frac_0.01` or `per_class_10`."""
    fraction, per_class = parse_budget(budget)
    return f"frac_{fraction:g}" if per_class is None else f"per_class_{per_class}"


def budget_name(budget: float | str) -> str:
    """How a budget reads in tables: `1 %` or `10/class`."""
    fraction, per_class = parse_budget(budget)
    return f"{100 * fraction:g} %" if per_class is None else f"{per_class}/class"


def mean(values: Iterable[float]) -> float:
    """The correctly rounded mean (exact arithmetic, then one rounding), so it never leaves [min, max]: tied label
    draws average to their own value. `statistics.fmean` can land one rounding step above the maximum (three draws
    of 0.006 each), which made an error bar's length negative and crashed the evaluate stage's plot."""
    return float(statistics.mean(values))


def spread(values: list[float]) -> float:
    """Sample standard deviation (exact arithmetic: tied values spread 0); 0 for a single value (a budget of 100 %
    is one subset); NaN where a value is not finite, as `mean` gives (a segmentation draw whose test masks have no
    labelled pixel scores NaN), where `statistics.stdev` would raise an AttributeError."""
    if not all(map(math.isfinite, values)):
        return math.nan
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


def choose_recipe(finetuned: dict[str, list[float]], linear: list[float]) -> tuple[str, str]:
    """(trial, headline protocol) for one budget and init from held-out accuracies over the label draws: the trial
    with the best mean (the earlier one on a tie), and the linear probe as the headline where its mean beats that
    trial's (a tie keeps fine-tuning). The rule of bench/finetune_search.py and of a task's own search."""
    means = {trial: mean(accs) for trial, accs in finetuned.items()}
    best = max(means, key=lambda trial: (means[trial], -list(means).index(trial)))
    return best, "linear" if mean(linear) > means[best] else "finetune"


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (budget, init, protocol) over its label draws: accuracy and macro-F1 mean, accuracy std/min/max,
    and whether it is its init's headline protocol (the draws of a protocol agree on that).

    Rows without a `draw` (results of one subset each) are one draw each."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["budget"], r["init"], r["protocol"]), []).append(r)
    rows = []
    for (budget, init, protocol), members in groups.items():
        accs = [r["acc"] for r in members]
        rows.append(
            {
                "budget": budget,
                "budget_name": members[0]["budget_name"],
                "labels": members[0]["labels"],
                "init": init,
                "protocol": protocol,
                "draws": len(members),
                "acc": mean(accs),
                "acc_std": spread(accs),
                "acc_min": min(accs),
                "acc_max": max(accs),
                "macro_f1": mean(r["macro_f1"] for r in members),
                "headline": any(r.get("headline", False) for r in members),
            }
        )
    return rows


def headline(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budget (fewest labels first), best against best: each init's headline protocol (the one its results rows
    flag as `headline`, declared by the finetune stage from `finetune.headline`: chosen on held-out labels, never on
    test), mean accuracy over the label draws, scratch fine-tuning beside it, and the gains. Each side's fine-tuning
    uses its own chosen recipe. A gain's spread is the std over the draws of the paired difference (both sides
    trained on the same labels in a draw). Rows carry `budget` (its key, `frac_0.01`), `labels`, `draw`, `headline`."""
    rows = aggregate(results)
    out: dict[str, Any] = {}
    for key in sorted({r["budget"] for r in rows}, key=lambda k: next(r["labels"] for r in rows if r["budget"] == k)):
        at = [r for r in rows if r["budget"] == key]

        top, top_scratch = _declared(at, "pretrained"), _declared(at, "scratch")
        scratch_ft = next(r for r in at if r["init"] == "scratch" and r["protocol"] == "finetune")
        h = {
            "labels": top["labels"],
            "budget_name": top["budget_name"],
            "draws": top["draws"],
            "best_pretrained": top["acc"],
            "best_pretrained_std": top["acc_std"],
            "best_pretrained_protocol": top["protocol"],
            "scratch_finetune": scratch_ft["acc"],
            "best_scratch": top_scratch["acc"],
            "best_scratch_std": top_scratch["acc_std"],
            "best_scratch_protocol": top_scratch["protocol"],
        }
        pairs = {"gain_vs_scratch_finetune": scratch_ft, "gain_vs_best_scratch": top_scratch}
        if any(r["init"] == "pixels" for r in at):
            pairs["gain_vs_pixels"] = _declared(at, "pixels")
            h["best_pixels"] = pairs["gain_vs_pixels"]["acc"]
        for name, other in pairs.items():
            g = _paired_gain(results, top, other)
            h |= {name: g["mean"], f"{name}_std": g["std"]}
        out[key] = h
    return out


def _declared(rows: list[dict[str, Any]], init: str) -> dict[str, Any]:
    """The one aggregated row of `init` flagged as its headline protocol."""
    declared = [r for r in rows if r["init"] == init and r["headline"]]
    if len(declared) != 1:
        where = f"{init} at {rows[0]['budget']}"
        raise ValueError(
            f"{len(declared)} protocols are flagged as the headline of {where} "
            f"({', '.join(r['protocol'] for r in declared) or 'none'}); the finetune stage flags exactly one"
        )
    return declared[0]


def _paired_gain(results: list[dict[str, Any]], a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Mean and std over the draws of a's accuracy minus b's on the same labels (a and b: aggregated rows)."""
    of_a = {r.get("draw", 0): r["acc"] for r in results if _same(r, a)}
    diffs = [of_a[r.get("draw", 0)] - r["acc"] for r in results if _same(r, b)]
    return {"mean": mean(diffs), "std": spread(diffs)}


def _same(row: dict[str, Any], of: dict[str, Any]) -> bool:
    return all(row[k] == of[k] for k in ("budget", "init", "protocol"))
