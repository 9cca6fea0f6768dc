"""Fashion-MNIST's four IDX files as arrays, for the benchmarks that run on the ML core alone (bench/gpu_profile.py,
bench/transfer_recipes.py): no prepared store, so that they run where only the raw files were carried."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslops.data.idx import read_idx


def load(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test images (N, 28, 28, 1 uint8) and int64 labels from the IDX files in `folder` (gzipped or not)."""

    def one(stem: str) -> np.ndarray:
        path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.exists()), None)
        if path is None:
            raise SystemExit(f"{folder} has no {stem}[.gz]: point --data at Fashion-MNIST's IDX files")
        return read_idx(path)

    xtr, ytr = one("train-images-idx3-ubyte")[..., None], one("train-labels-idx1-ubyte").astype(np.int64)
    xte, yte = one("t10k-images-idx3-ubyte")[..., None], one("t10k-labels-idx1-ubyte").astype(np.int64)
    return xtr, ytr, xte, yte
