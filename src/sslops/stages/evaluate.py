"""evaluate: score every model of the finetune stage on the test split, and draw the results.

Per model: accuracy, macro-F1, per-class accuracy and the confusion matrix. Across models: the
label-efficiency curve (accuracy against labels, pretrained vs scratch), a 2-D t-SNE map of test embeddings
(pretrained beside random init), the confusion matrix of the headline model (best pretrained protocol at the
smallest label budget). Metrics go to metrics/evaluate.json (`dvc metrics show/diff`), curves to plots/
(`dvc plots show`), everything to the MLflow run, and each finetune child run gets its own test scores.
Metric names: `test.<metric>.frac_<f>.<protocol>.<init>`, e.g. `test.acc.frac_0.01.finetune.pretrained`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from sslops import tracking
from sslops.atomic import atomic_dir, atomic_file, write_json
from sslops.config import Project
from sslops.data.store import ImageStore
from sslops.errors import SslopsError
from sslops.stages.finetune import INITS, labelled


def metric_key(metric: str, entry: dict[str, Any]) -> str:
    return f"test.{metric}.frac_{entry['fraction']:g}.{entry['protocol']}.{entry['init']}"


def headline(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per fraction: best pretrained protocol, the scratch fine-tune (same recipe) and the gain between them."""
    out: dict[str, Any] = {}
    for frac in sorted({r["fraction"] for r in results}):
        rows = [r for r in results if r["fraction"] == frac]
        best = max((r for r in rows if r["init"] == "pretrained"), key=lambda r: r["acc"])
        scratch_ft = next(r for r in rows if r["init"] == "scratch" and r["protocol"] == "finetune")
        best_scratch = max((r for r in rows if r["init"] == "scratch"), key=lambda r: r["acc"])
        out[f"frac_{frac:g}"] = {
            "labels": best["labels"], "best_pretrained": best["acc"], "best_pretrained_protocol": best["protocol"],
            "scratch_finetune": scratch_ft["acc"], "gain_vs_scratch_finetune": best["acc"] - scratch_ft["acc"],
            "best_scratch": best_scratch["acc"], "best_scratch_protocol": best_scratch["protocol"],
            "gain_vs_best_scratch": best["acc"] - best_scratch["acc"],
        }
    return out


def _tsne(feats: np.ndarray, seed: int, perplexity: float) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    reduced = PCA(n_components=min(50, feats.shape[1], len(feats)), random_state=seed).fit_transform(feats)
    return TSNE(n_components=2, perplexity=min(perplexity, (len(feats) - 1) / 3), init="pca", random_state=seed).fit_transform(reduced)


def run(project: Project) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from sslops import plots
    from sslops.ml.knn import knn_predict
    from sslops.ml.metrics import scores
    from sslops.ml.train import pick_device
    from sslops.ml.transfer import Classifier, LinearProbe, features, predict

    params = project.section("evaluate")
    knn_params = project.section("finetune").get("knn") or {}
    folder = project.root / "artifacts" / "finetune"
    if not (folder / "index.json").is_file():
        raise SslopsError(f"{folder / 'index.json'} is missing: run the finetune stage first (dvc repro finetune).")
    index = json.loads((folder / "index.json").read_text())
    store = ImageStore.open(project.prepared_dir)
    classes = store.classes
    test_rows, test_labels = labelled(store, "test")
    test_images = store.images[test_rows]
    n_classes = int(index["n_classes"])
    device = pick_device(str(params.get("device", "auto")))
    seed = int(params.get("seed", 0))

    with tracking.stage_run(project, "evaluate", params) as run:
        model = index["model"]
        tracking.set_tags({"model.name": model["name"], "model.version": model["version"], "finetune.run_id": index["parent_run_id"],
                           "pretrain.run_id": model["pretrain_run_id"]})
        started = time.perf_counter()
        pretrained = tracking.load_encoder(model["name"], model["version"]).to(device)
        scratch = pretrained.untrained_copy()
        scratch.load_state_dict(torch.load(folder / "scratch-encoder.pt", map_location="cpu", weights_only=True))
        encoders = {"pretrained": pretrained, "scratch": scratch.to(device)}
        test_feats = {init: features(enc, test_images, device) for init, enc in encoders.items()}
        bank_rows = np.unique(np.concatenate([np.load(folder / e["file"]) for e in index["entries"] if e["protocol"] == "knn"]))
        bank_feats = {init: features(enc, store.images[bank_rows], device) for init, enc in encoders.items()}
        row_labels = store.manifest["label"].fillna(-1).to_numpy(dtype=np.int64)

        results = []
        for entry in index["entries"]:
            init, protocol = entry["init"], entry["protocol"]
            state_file = folder / entry["file"]
            if protocol == "linear":
                probe = LinearProbe(test_feats[init].shape[1], n_classes)
                probe.load_state_dict(torch.load(state_file, map_location="cpu", weights_only=True))
                with torch.no_grad():
                    preds = probe.eval()(test_feats[init]).argmax(1).numpy()
            elif protocol == "knn":
                rows = np.load(state_file)
                feats = bank_feats[init][np.searchsorted(bank_rows, rows)]
                bank_labels = torch.as_tensor(row_labels[rows])
                preds = knn_predict(F.normalize(feats, dim=1), bank_labels, F.normalize(test_feats[init], dim=1), n_classes,
                                    int(knn_params.get("k", 200)), float(knn_params.get("temperature", 0.1))).numpy()
            else:
                classifier = Classifier(pretrained.untrained_copy(), n_classes)
                classifier.load_state_dict(torch.load(state_file, map_location="cpu", weights_only=True))
                preds = predict(classifier.to(device), test_images, device)
            result = {**{k: entry[k] for k in ("fraction", "labels", "init", "protocol", "run_id")}, **scores(test_labels, preds, n_classes)}
            results.append(result)
            tracking.log_metrics_to(entry["run_id"], {"test.acc": result["acc"], "test.macro_f1": result["macro_f1"]})

        summary = headline(results)
        metrics = {metric_key(m, r): round(r[m], 5) for r in results for m in ("acc", "macro_f1")}
        for frac, h in summary.items():
            metrics.update({f"headline.{frac}.{k}": (round(v, 5) if isinstance(v, float) else v) for k, v in h.items()})
        smallest = min(r["fraction"] for r in results)
        best = next(r for r in results if r["fraction"] == smallest and r["init"] == "pretrained"
                    and r["protocol"] == summary[f"frac_{smallest:g}"]["best_pretrained_protocol"])

        out = project.root / "artifacts" / "evaluate"
        with atomic_dir(out) as tmp:
            write_json(tmp / "results.json", {"model": model, "classes": classes, "results": results, "headline": summary})
        figures = project.root / "plots"
        with atomic_file(figures / "label_efficiency.png") as tmp:
            plots.label_efficiency(results, tmp)
        with atomic_file(figures / "confusion.png") as tmp:
            plots.confusion(np.asarray(best["confusion"]), classes,
                            f"{best['protocol']}, pretrained, {best['labels']} labels: acc {100 * best['acc']:.1f}%", tmp)
        n_map = min(int(params.get("map_points", 2000)), len(test_rows))
        pick = np.sort(np.random.default_rng(seed).choice(len(test_rows), n_map, replace=False))
        maps = {f"{init} encoder (t-SNE of {n_map} test images)": _tsne(test_feats[init][pick].numpy(), seed, float(params.get("perplexity", 30)))
                for init in INITS}
        with atomic_file(figures / "embedding_map.png") as tmp:
            plots.embedding_maps(maps, test_labels[pick], classes, tmp)
        _write_plots(project, results, best, test_labels, classes)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        write_json(project.metrics_dir / "evaluate.json", metrics)
        tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracking.log_artifacts(out, "evaluation")
        for name in ("label_efficiency.png", "confusion.png", "embedding_map.png", "label_efficiency.csv"):
            tracking.log_artifacts(figures / name, "evaluation")
    print(format_table(results, summary))
    return {"run_id": run.info.run_id, **{f"{k}.{g}": round(v[g], 4) for k, v in summary.items()
                                          for g in ("gain_vs_scratch_finetune", "gain_vs_best_scratch")}}


def _write_plots(project: Project, results: list[dict[str, Any]], best: dict[str, Any], test_labels: np.ndarray, classes: list[str]) -> None:
    """DVC plots: the label-efficiency table (one column per protocol/init) and the headline confusion pairs."""
    series = sorted({(r["protocol"], r["init"]) for r in results})
    lines = ["labels," + ",".join(f"{p}_{i}" for p, i in series)]
    for labels in sorted({r["labels"] for r in results}):
        acc = {(r["protocol"], r["init"]): r["acc"] for r in results if r["labels"] == labels}
        lines.append(f"{labels}," + ",".join(f"{acc[s]:.5f}" for s in series))
    with atomic_file(project.root / "plots" / "label_efficiency.csv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    cm = np.asarray(best["confusion"])
    pairs = ["actual,predicted"] + [f"{classes[t]},{classes[p]}" for t in range(len(cm)) for p in range(len(cm)) for _ in range(cm[t, p])]
    with atomic_file(project.root / "plots" / "confusion.csv") as tmp:
        tmp.write_text("\n".join(pairs) + "\n")


def format_table(results: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The results table `make run` ends with: test accuracy per label budget, protocol and init."""
    fracs = sorted({r["fraction"] for r in results})
    acc = {(r["fraction"], r["protocol"], r["init"]): r["acc"] for r in results}
    labels = {r["fraction"]: r["labels"] for r in results}
    head = "| protocol | init | " + " | ".join(f"{f:g} ({labels[f]} labels)" for f in fracs) + " |"
    lines = [head, "|" + "---|" * (2 + len(fracs))]
    for protocol in ("linear", "knn", "finetune"):
        for init in INITS:
            if (fracs[0], protocol, init) in acc:
                lines.append(f"| {protocol} | {init} | " + " | ".join(f"{100 * acc[(f, protocol, init)]:.2f} %" for f in fracs) + " |")
    for key, label in (("gain_vs_scratch_finetune", "best pretrained − scratch fine-tune (same recipe)"),
                       ("gain_vs_best_scratch", "best pretrained − best scratch protocol")):
        gains = " | ".join(f"{100 * summary[f'frac_{f:g}'][key]:+.2f}" for f in fracs)
        lines.append(f"| **gain** | {label} | {gains} |")
    return "\n".join(lines)
