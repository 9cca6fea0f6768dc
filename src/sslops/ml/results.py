"""Transfer results as rows: how label budgets are named and what the headline compares (numpy-free, torch-free).

One row per (budget, init, protocol) with its test scores; shared by the evaluate stage, `sslops report` and
the flow summary, so a budget is spelled `frac_0.01` (a fraction of the labelled train split) or `per_class_10`
("10/class" in params.yaml) in one place only.
"""

from __future__ import annotations

from typing import Any

INITS = ("pretrained", "scratch", "pixels")  # pixels: the task's prepared pixels as features (no fine-tuning)
PROTOCOLS = ("linear", "knn", "finetune")


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


def headline(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budget (fewest labels first): best pretrained protocol, scratch fine-tune (same recipe), best scratch
    protocol and the gains. Rows carry `budget` (its key, `frac_0.01`) and `labels`."""
    out: dict[str, Any] = {}
    for key in sorted(
        {r["budget"] for r in results}, key=lambda k: next(r["labels"] for r in results if r["budget"] == k)
    ):
        rows = [r for r in results if r["budget"] == key]
        best = max((r for r in rows if r["init"] == "pretrained"), key=lambda r: r["acc"])
        scratch_ft = next(r for r in rows if r["init"] == "scratch" and r["protocol"] == "finetune")
        best_scratch = max((r for r in rows if r["init"] == "scratch"), key=lambda r: r["acc"])
        out[key] = {
            "labels": best["labels"],
            "budget_name": best["budget_name"],
            "best_pretrained": best["acc"],
            "best_pretrained_protocol": best["protocol"],
            "scratch_finetune": scratch_ft["acc"],
            "gain_vs_scratch_finetune": best["acc"] - scratch_ft["acc"],
            "best_scratch": best_scratch["acc"],
            "best_scratch_protocol": best_scratch["protocol"],
            "gain_vs_best_scratch": best["acc"] - best_scratch["acc"],
        }
        pixels = [r for r in rows if r["init"] == "pixels"]
        if pixels:
            best_pixels = max(pixels, key=lambda r: r["acc"])
            out[key] |= {"best_pixels": best_pixels["acc"], "gain_vs_pixels": best["acc"] - best_pixels["acc"]}
    return out
