"""Figures people would rather look at than read (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def view_pairs_grid(originals: np.ndarray, first: np.ndarray, second: np.ndarray, path: Path) -> None:
    """Rows of (original, view 1, view 2) for a few images; arrays are uint8 NCHW."""
    plt = _pyplot()
    n = len(originals)
    fig, axes = plt.subplots(n, 3, figsize=(4.5, 1.5 * n), squeeze=False)
    for i in range(n):
        for j, (title, arr) in enumerate((("original", originals), ("view 1", first), ("view 2", second))):
            img = arr[i].transpose(1, 2, 0)
            axes[i, j].imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
