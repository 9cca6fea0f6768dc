"""evaluate: score every model of one task's finetune stage on that task's test split, and draw the results.

Runs per downstream task (`--task NAME`, dvc.yaml `evaluate@NAME`); the only stage that reads a test split.
Per model: accuracy, macro-F1, per-class accuracy and the confusion matrix. Across models: the label-efficiency
curve (accuracy against labels, pretrained vs scratch vs raw pixels), a 2-D t-SNE map of test embeddings
(pretrained beside random init), the confusion matrix of the headline model (the pretrained headline protocol at
the smallest label budget). Metrics go to metrics/tasks/NAME/evaluate.json (`dvc metrics show/diff`), curves to
plots/tasks/NAME (`dvc plots show`); everything goes to the MLflow run, and each
finetune child run gets its own test scores. Metric names: `test.<metric>.<budget>.<protocol>.<init>`, e.g.
`test.acc.frac_0.01.finetune.pretrained` or `test.acc.per_class_10.linear.pixels`.
`sslops report` prints the results as a table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sslops.adapters import tracking
from sslops.config import Project
from sslops.config.schema import EvaluateParams
from sslops.data.store import ImageStore
from sslops.errors import SslopsError
from sslops.ml.results import aggregate, headline
from sslops.outputs import plots
from sslops.outputs.atomic import atomic_dir, atomic_file, write_json

if TYPE_CHECKING:
    import torch

FIGURES = ("label_efficiency.png", "confusion.png", "embedding_map.png", "label_efficiency.csv", "confusion.csv")
MAPPED = ("pretrained", "scratch")  # the encoders drawn as t-SNE maps


def run(project: Project, task: str | None = None) -> dict[str, Any]:
    from sslops.ml.device import machine, pick_device
    from sslops.ml.transfer import features

    if task is None:
        raise SslopsError("evaluate runs per downstream task: sslops evaluate --task NAME (dvc.yaml: evaluate@NAME).")
    cfg: EvaluateParams = project.config("evaluate")
    out = project.outputs(task)
    folder = out.finetune
    if not (folder / "index.json").is_file():
        raise SslopsError(
            f"{folder / 'index.json'} is missing: run the finetune stage first (dvc repro finetune@{task})."
        )
    index = json.loads((folder / "index.json").read_text())
    model = index["model"]
    store = ImageStore.open(out.prepared)
    test_rows, test_labels = store.labelled("test")
    device = pick_device(cfg.device)

    with tracking.stage_run(project, "evaluate", cfg.record(), task=task) as run:
        tags = {
            "model.name": model["name"],
            "model.version": model["version"],
            "finetune.run_id": index["parent_run_id"],
            "task": task,
        }
        tracking.set_tags({**tags, "pretrain.run_id": model["pretrain_run_id"], "evaluate.machine": machine(device)})
        started = time.perf_counter()
        encoders = _encoders(folder, model, device)
        test_feats = {init: features(enc, store.take(test_rows), device) for init, enc in encoders.items()}
        results = _score(cfg, folder, index, store, encoders, (test_rows, test_labels, test_feats), device)
        summary = headline(results)
        _draw(out.plots, task, cfg, results, summary, store.classes, test_labels, test_feats)
        with atomic_dir(out.evaluate) as tmp:  # after the plots: a stage that fails there leaves no results of its own
            record = {"model": model, "task": task, "classes": store.classes, "results": results, "headline": summary}
            write_json(tmp / "results.json", {**record, "run_id": run.info.run_id})  # `sslops report` checks its status
        metrics = {**_metrics(results, summary), "seconds": round(time.perf_counter() - started, 1)}
        metrics["machine"] = machine(device)
        write_json(out.metrics / "evaluate.json", metrics)
        tracking.log_metrics({k: v for k, v in metrics.items() if type(v) in (int, float)})  # not str, not bool
        tracking.log_artifacts(out.evaluate, "evaluation")
        for name in FIGURES:
            tracking.log_artifacts(out.plots / name, "evaluation")
    print("results table: sslops report")
    gains = ("gain_vs_scratch_finetune", "gain_vs_best_scratch")
    return {
        "run_id": run.info.run_id,
        "task": task,
        **{f"{k}.{g}": round(v[g], 4) for k, v in summary.items() for g in gains},
    }


def _metrics(results: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """metrics/tasks/NAME/evaluate.json: `test.<metric>.<budget>.<protocol>.<init>` (the mean over the label draws;
    `acc_std` their spread) and `headline.<budget>.<key>`."""
    metrics = {
        f"test.{m}.{r['budget']}.{r['protocol']}.{r['init']}": round(r[m], 5)
        for r in aggregate(results)
        for m in ("acc", "acc_std", "macro_f1")
    }
    for budget, h in summary.items():
        metrics.update({f"headline.{budget}.{k}": (round(v, 5) if isinstance(v, float) else v) for k, v in h.items()})
    return metrics


def _encoders(finetuned: Path, model: dict[str, Any], device: torch.device) -> dict[str, torch.nn.Module]:
    """The registered encoder (the exact version finetune used), the scratch encoder finetune started from, and the
    raw-pixel baseline."""
    import torch

    from sslops.ml.models import Pixels, input_shape, load_encoder_dir

    recorded = {"model_name": model["name"], "version": model["version"]}  # what finetune used, by number
    recorded |= {k: model.get(k) for k in ("encoder_sha256", "encoder_spec_sha256")}
    with tracking.registered_encoder(model["name"], str(model["version"]), recorded) as (folder, _, digests):
        pretrained, spec = load_encoder_dir(folder, *digests)
    scratch = pretrained.untrained_copy()
    scratch.load_state_dict(torch.load(finetuned / "scratch-encoder.pt", map_location="cpu", weights_only=True))
    return {"pretrained": pretrained.to(device), "scratch": scratch.to(device), "pixels": Pixels(*input_shape(spec))}


def _score(
    cfg: EvaluateParams,
    folder: Path,
    index: dict[str, Any],
    store: ImageStore,
    encoders: dict[str, torch.nn.Module],
    test: tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]],
    device: torch.device,
) -> list[dict[str, Any]]:
    """Test predictions of every model finetune trained, scored; each score is also added to its child run."""
    import torch
    import torch.nn.functional as F

    from sslops.ml.knn import knn_predict
    from sslops.ml.metrics import scores
    from sslops.ml.transfer import Classifier, LinearProbe, features, predict

    test_rows, test_labels, test_feats = test
    n_classes = int(index["n_classes"])
    knn_files = [np.load(folder / e["file"]) for e in index["entries"] if e["protocol"] == "knn"]
    bank_rows = np.unique(np.concatenate(knn_files))
    bank_feats = {init: features(enc, store.take(bank_rows), device) for init, enc in encoders.items()}
    row_labels = store.manifest["label"].fillna(-1).to_numpy(dtype=np.int64)
    results = []
    for entry in index["entries"]:
        init, protocol, state_file = entry["init"], entry["protocol"], folder / entry["file"]
        if protocol == "linear":
            probe = LinearProbe(test_feats[init].shape[1], n_classes)
            probe.load_state_dict(torch.load(state_file, map_location="cpu", weights_only=True))
            with torch.no_grad():
                preds = probe.eval()(test_feats[init]).argmax(1).numpy()
        elif protocol == "knn":
            rows = np.load(state_file)
            bank = F.normalize(bank_feats[init][np.searchsorted(bank_rows, rows)], dim=1)
            preds = knn_predict(
                bank,
                torch.as_tensor(row_labels[rows]),
                F.normalize(test_feats[init], dim=1),
                n_classes,
                cfg.knn.k,
                cfg.knn.temperature,
            ).numpy()
        else:
            classifier = Classifier(encoders["pretrained"].untrained_copy(), n_classes)
            classifier.load_state_dict(torch.load(state_file, map_location="cpu", weights_only=True))
            preds = predict(classifier.to(device), store.take(test_rows), device)
        keep = {k: entry[k] for k in ("budget", "budget_name", "labels", "draw", "init", "protocol", "run_id")}
        keep["headline"] = _headline_flag(folder, entry)
        result = {**keep, **scores(test_labels, preds, n_classes)}
        results.append(result)
        tracking.log_metrics_to(entry["run_id"], {"test.acc": result["acc"], "test.macro_f1": result["macro_f1"]})
    return results


def _headline_flag(folder: Path, entry: dict[str, Any]) -> bool:
    """Whether finetune declared this entry's protocol the headline one for its init (`finetune.headline`)."""
    if "headline" not in entry:
        raise SslopsError(
            f"{folder / 'index.json'} does not say which protocol is each init's headline (written before "
            "finetune.headline existed): run the finetune stage again (dvc repro)."
        )
    return bool(entry["headline"])


def _draw(
    figures: Path,
    task: str,
    cfg: EvaluateParams,
    results: list[dict[str, Any]],
    summary: dict[str, Any],
    classes: list[str],
    test_labels: np.ndarray,
    test_feats: dict[str, torch.Tensor],
) -> None:
    """The PNG figures and the DVC plot files: label efficiency, headline confusion matrix, embedding maps."""
    smallest = next(iter(summary))  # headline's budgets come fewest labels first
    protocol = summary[smallest]["best_pretrained_protocol"]
    best = next(  # its first label draw
        r for r in results if r["budget"] == smallest and r["init"] == "pretrained" and r["protocol"] == protocol
    )
    with atomic_file(figures / "label_efficiency.png") as tmp:
        plots.label_efficiency(aggregate(results), tmp, f"Task {task}")
    title = f"{best['protocol']}, pretrained, {best['labels']} labels: acc {100 * best['acc']:.1f}%"
    with atomic_file(figures / "confusion.png") as tmp:
        plots.confusion(np.asarray(best["confusion"]), classes, title, tmp)
    n_map = min(cfg.map_points, len(test_labels))
    pick = np.sort(np.random.default_rng(cfg.seed).choice(len(test_labels), n_map, replace=False))
    maps = {
        f"{init} encoder (t-SNE of {n_map} test images)": plots.tsne_2d(
            test_feats[init][pick].numpy(), cfg.seed, cfg.perplexity
        )
        for init in MAPPED
    }
    with atomic_file(figures / "embedding_map.png") as tmp:
        plots.embedding_maps(maps, test_labels[pick], classes, tmp)
    _write_plot_tables(figures, results, best, classes)


def _write_plot_tables(figures: Path, results: list[dict[str, Any]], best: dict[str, Any], classes: list[str]) -> None:
    """DVC plots: the label-efficiency table (one column per protocol/init, means over the label draws; empty where
    a protocol did not run at a budget) and the headline confusion pairs."""
    results = aggregate(results)
    series = sorted({(r["protocol"], r["init"]) for r in results})
    lines = ["labels," + ",".join(f"{p}_{i}" for p, i in series)]
    for labels in sorted({r["labels"] for r in results}):
        acc = {(r["protocol"], r["init"]): r["acc"] for r in results if r["labels"] == labels}
        lines.append(f"{labels}," + ",".join(f"{acc[s]:.5f}" if s in acc else "" for s in series))
    with atomic_file(figures / "label_efficiency.csv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    cm = np.asarray(best["confusion"])
    pairs = ["actual,predicted"] + [
        f"{classes[t]},{classes[p]}" for t in range(len(cm)) for p in range(len(cm)) for _ in range(cm[t, p])
    ]
    with atomic_file(figures / "confusion.csv") as tmp:
        tmp.write_text("\n".join(pairs) + "\n")
