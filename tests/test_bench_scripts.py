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


def test_large_images_decodes_its_folder_by_prepares_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing does not call anything: bench/large_images.py once called `images.read(size=...)` after that
    argument was gone, which only running its decoding shows."""
    import numpy as np
    from PIL import Image

    monkeypatch.syspath_prepend(str(BENCH))
    large_images = importlib.import_module("large_images")
    paths = []
    for i, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        paths.append(tmp_path / f"{i}.jpg")
        Image.new("RGB", (8, 8), colour).save(paths[-1], quality=95)
    store = large_images.decode_store(paths, tmp_path / "store.npy", 8)
    assert store.shape == (2, 8, 8, 3) and store.dtype == np.uint8
    assert store[0, ..., 0].min() > 200 and store[1, ..., 2].min() > 200  # red, then blue
