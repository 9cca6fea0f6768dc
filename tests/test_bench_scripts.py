"""Every benchmark script still imports against today's sslops: most run only on a lent GPU or for hours, so a
change to the core they call (a new required field of a config dataclass, a renamed function) would otherwise break
them unseen until the next machine that could run them (bench/transfer_recipes.py was found so in 2026-11)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCH.glob("*.py")))
def test_each_bench_script_imports(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import each other as they do when run from bench/
    module = importlib.import_module(script)
    assert module.__doc__, f"bench/{script}.py says nothing of what it measures"
