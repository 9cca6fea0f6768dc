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


LINESTYLES = {"pretrained": "-", "scratch": "--", "pixels": ":"}


def label_efficiency(
    rows: list[dict], path: Path, title: str, metric: str = "acc", ylabel: str = "test accuracy (%)"
) -> None:
    """A test score (`metric`, a share) against the number of labels (log x), one line per protocol and
    initialisation; error bars span the label draws' min to max where a row has them (`<metric>_min`, `_max`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    series = sorted({(r["protocol"], r["init"]) for r in rows})
    colours = {"linear": "tab:blue", "knn": "tab:green", "finetune": "tab:red", "distill": "tab:purple"}
    for protocol, init in series:
        pts = sorted(
            (r["labels"], r[metric], r.get(f"{metric}_min", r[metric]), r.get(f"{metric}_max", r[metric]))
            for r in rows
            if (r["protocol"], r["init"]) == (protocol, init)
        )
        ax.errorbar(
            [p[0] for p in pts],
            [100 * p[1] for p in pts],
            yerr=[[100 * (p[1] - p[2]) for p in pts], [100 * (p[3] - p[1]) for p in pts]],
            capsize=3,
            marker="o",
            color=colours.get(protocol),
            linestyle=LINESTYLES.get(init, "-."),
            label=f"{protocol}, {init}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}: pretrained (solid), random init (dashed), pixels (dotted)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def confusion(cm: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    shares = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shares[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def embedding_maps(maps: dict[str, np.ndarray], labels: np.ndarray, classes: list[str], path: Path) -> None:
    """Side-by-side 2-D maps (e.g. t-SNE) of test embeddings, coloured by class."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(maps), figsize=(5.5 * len(maps), 5), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (title, xy) in zip(axes[0], maps.items(), strict=True):
        for c, name in enumerate(classes):
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=3, color=cmap(c % 10), label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def message(text: str, path: Path) -> None:
    """A figure holding only `text`: where a plot has too little to show, its file still exists and says why."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    ax.axis("off")
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def tsne_2d(feats: np.ndarray, seed: int, perplexity: float) -> np.ndarray:
    """2-D t-SNE coordinates of `feats` (PCA to 50 dimensions first), for `embedding_maps`."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    reduced = PCA(n_components=min(50, feats.shape[1], len(feats)), random_state=seed).fit_transform(feats)
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(feats) - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(reduced)


def dense_examples(
    images: np.ndarray, panels: list[tuple[str, list[dict]]], classes: list[str], path: Path, score_min: float = 0.3
) -> None:
    """Test scenes (rows) beside their ground truth and each model's prediction (columns). `images` are uint8
    (N, H, W, C); each panel is (title, one dict per image) holding `mask` (H, W class ids, 0 background) and/or
    `boxes` (n, 4 x1 y1 x2 y2), `labels` (0-based) and optionally `scores` (boxes under `score_min` are not drawn)."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    colours = plt.get_cmap("tab10")
    n, cols = len(images), len(panels)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    for i in range(n):
        for j, (title, found) in enumerate(panels):
            ax, item = axes[i, j], found[i]
            ax.imshow(images[i].squeeze(-1) if images.shape[-1] == 1 else images[i], cmap="gray", vmin=0, vmax=255)
            if "mask" in item:
                shown = np.ma.masked_equal(item["mask"], 0)
                ax.imshow(shown, cmap=colours, vmin=1, vmax=10, alpha=0.55, interpolation="nearest")
            scores = item.get("scores", np.ones(len(item.get("boxes", []))))
            for (x1, y1, x2, y2), label, score in zip(
                item.get("boxes", []), item.get("labels", []), scores, strict=True
            ):
                if score < score_min:
                    continue
                colour = colours(int(label) % 10)
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))
                text = classes[int(label)] + ("" if "scores" not in item else f" {score:.2f}")
                ax.text(x1, y1 - 1, text, color=colour, fontsize=6, va="bottom")
            ax.axis("off")
            if i == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def precision_recall(curves: dict[str, np.ndarray], path: Path, title: str) -> None:
    """Precision against recall (COCO's 101 recall points, IoU 0.5, mean over classes), one line per model, named
    "<init>, <what>": its init sets the line style."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    recall = np.linspace(0, 1, 101)
    for name, precision in curves.items():  # "pretrained, ..." solid, "scratch, ..." dashed
        ax.plot(recall, precision, LINESTYLES.get(name.split(",")[0], "-"), label=name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
