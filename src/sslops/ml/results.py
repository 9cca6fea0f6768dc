"""Transfer results as rows: how label budgets are named and what the headline compares (numpy-free, torch-free).

One row per (fraction, init, protocol) with its test scores; shared by the evaluate stage, `sslops report` and
the flow summary, so a budget is spelled `frac_0.01` in one place only.
"""

from __future__ import annotations

from typing import Any

INITS = ("pretrained", "scratch")
PROTOCOLS = ("linear", "knn", "finetune")


def budget_key(fraction: float) -> str:
    """The name of a label budget in metrics, run names and files: `frac_0.01`."""
    return f"frac_{fraction:g}"


def headline(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budget: best pretrained protocol, scratch fine-tune (same recipe), best scratch protocol and the gains."""
    out: dict[str, Any] = {}
    for frac in sorted({r["fraction"] for r in results}):
        rows = [r for r in results if r["fraction"] == frac]
        best = max((r for r in rows if r["init"] == "pretrained"), key=lambda r: r["acc"])
        scratch_ft = next(r for r in rows if r["init"] == "scratch" and r["protocol"] == "finetune")
        best_scratch = max((r for r in rows if r["init"] == "scratch"), key=lambda r: r["acc"])
        out[budget_key(frac)] = {
            "labels": best["labels"],
            "best_pretrained": best["acc"],
            "best_pretrained_protocol": best["protocol"],
            "scratch_finetune": scratch_ft["acc"],
            "gain_vs_scratch_finetune": best["acc"] - scratch_ft["acc"],
            "best_scratch": best_scratch["acc"],
            "best_scratch_protocol": best_scratch["protocol"],
            "gain_vs_best_scratch": best["acc"] - best_scratch["acc"],
        }
    return out
