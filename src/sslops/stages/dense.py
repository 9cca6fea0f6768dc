"""The task stages of a detection or segmentation task (`tasks.NAME.kind`), run by the same dvc.yaml stages as a
classification task's (`task_prepare@NAME`, `task_validate@NAME`, `finetune@NAME`, `evaluate@NAME`).

- prepare: the task's COCO JSON (detection) or image and mask folders (segmentation) read with every problem named
  (`sslops.data.dense`), images converted to the encoder's channels at their own size (boxes and masks are in their
  pixels), written as one dense store: images and masks as arrays, boxes as a table, a manifest row per image.
- validate: the task's Great Expectations suites on that store: its images (one size, none blank, no test scene also
  in train or in pretraining) and its labels (boxes inside their image and not degenerate, class ids declared; masks
  of their image's size, ids in range), Data Docs beside a classification task's.
- finetune: the registered encoder as the backbone of torchvision's FCOS or of the light segmentation decoder
  (`sslops.ml.dense`), against the same architecture at random init, at each label budget (a fraction of the train
  scenes, nested, `finetune.draws` draws below 100 %). Every trial of `finetune.dense.trials` is first tried on held
  out scenes (`finetune.search.holdout`) of the budget's first draw, alike for both inits, and each init trains every
  draw with its best: the protocol the classification tasks follow, never reading test.
- evaluate: COCO mAP@[.5:.95] and mAP@.5 (detection) or mIoU and per-class IoU (segmentation) on the test scenes;
  the label-efficiency curve, the confusion matrix (boxes: classes matched at IoU 0.5 with background for misses and
  false alarms; masks: pixels), the embedding map (t-SNE of the encoders' features pooled over each object), and
  pictures in MLflow: predicted boxes and masks beside the truth, precision-recall curves.

Metric names follow the classification tasks': `test.<metric>.<budget>.finetune.<init>` (`map`, `map_50`, `miou`)
with `<metric>_std` the spread over label draws, and `headline.<budget>.gain` (pretrained minus scratch).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sslops.adapters import expectations, tracking
from sslops.config import Project
from sslops.config.schema import DenseRecipeParams
from sslops.data import dense, quality, resize
from sslops.data.store import manifest_digest
from sslops.errors import DataValidationError, SslopsError
from sslops.ml.results import DENSE_METRICS, budget_key, budget_name, mean, parse_budget, spread
from sslops.outputs import plots
from sslops.outputs.atomic import atomic_dir, atomic_file, write_json

if TYPE_CHECKING:
    import pandas as pd
    import torch

SPLITS = ("train", "test")
INITS = ("pretrained", "scratch")
SHOWN = 4  # test scenes in the examples picture
MIN_MAPPED = 5  # test objects below which t-SNE draws no map
SCORE_SHOWN = 0.5  # predicted boxes drawn in the examples picture: those scored at least this


def prepare(project: Project, task: str) -> dict[str, Any]:
    """task_prepare@NAME for a dense task: read, check and store its scenes and labels."""
    cfg, params, out = project.config("prepare"), project.config("tasks")[task], project.outputs(task)
    root = project.path(params.root)
    fit = resize.encoder_input(project.prepared_dir)
    record = {"task": task, **params.record(), "max_pixels": cfg.max_pixels, "mask_ignore": cfg.mask_ignore}
    with tracking.stage_run(project, "prepare", record, task=task):
        start = time.perf_counter()
        classes, splits = list(params.classes), {}
        for split in SPLITS:
            if params.kind == "detection":
                labelled = dense.read_coco(root, split, cfg.max_pixels)
                if classes and labelled.classes != classes:
                    raise dense.DenseRejected(
                        f"{root / split / dense.ANNOTATIONS}: its categories {labelled.classes} are not tasks.{task}"
                        f".classes {classes} (the same names, in the order of their ids)"
                    )
                classes = labelled.classes
            else:
                labelled = dense.read_masks(root, split, classes, cfg.mask_ignore, cfg.max_pixels)
            if not labelled.images:
                raise dense.DenseRejected(f"{root / split}: no images; a dense task needs train and test scenes.")
            splits[split] = dense.load_split(root, labelled, fit.channels, cfg.max_pixels, cfg.mask_ignore)
        shapes = {s: a.images.shape[1:] for s, a in splits.items()}
        if len(set(shapes.values())) != 1:
            raise dense.DenseRejected(f"{root}: train and test scenes differ in size ({shapes}); they must share one.")
        height, width, channels = shapes["train"]
        spec = {"kind": params.kind, "format": params.format, "classes": classes, "splits": list(SPLITS)}
        spec |= {"ignore": cfg.mask_ignore, "height": height, "width": width, "channels": channels}
        with atomic_dir(out.prepared) as tmp:
            table = dense.write_store(tmp, splits, spec)
        digest = manifest_digest(table)
        summary = {
            "images": len(table),
            **{f"images_{s}": len(a.files) for s, a in splits.items()},
            "objects_train": int(table.loc[table["split"] == "train", "objects"].sum()),
            "classes": len(classes),
            "shape": [height, width, channels],
            "seconds": round(time.perf_counter() - start, 2),
            "manifest_digest": digest,
        }
        tracking.log_manifest(out.prepared / dense.MANIFEST, digest, context="prepare")
        tracking.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        tracking.set_tags({"data.manifest_digest": digest, "data.shape": "x".join(map(str, summary["shape"]))})
        write_json(out.metrics / "prepare.json", summary)
    return summary


def validate(project: Project, task: str) -> dict[str, Any]:
    """task_validate@NAME for a dense task: Great Expectations on its images and labels; a failure stops the task."""
    import pandas as pd

    cfg, out = project.config("validate"), project.outputs(task)
    spec, splits = dense.open_store(out.prepared)
    classes = spec["classes"]
    with tracking.stage_run(project, "validate", cfg.record(), task=task):
        start = time.perf_counter()
        manifest = pd.read_parquet(out.prepared / dense.MANIFEST)
        table = quality.annotate(manifest, quality.pretraining_hashes(project.prepared_dir))
        suites = expectations.dense_expectations(cfg, spec["kind"], classes, len(table))
        frames = {"images": table, "class_balance": _balance(spec, splits["train"])}
        if spec["kind"] == "detection":
            frames["boxes"] = _boxes(splits)
        else:
            frames["masks"] = _masks(splits, len(classes))
        with atomic_dir(out.validation) as tmp:
            checks = expectations.run_suites({k: (f, suites[k]) for k, f in frames.items()}, tmp / "data_docs")
            expectations.serve_assets(tmp / "data_docs", project.root / expectations.ASSETS)
            write_json(tmp / "results.json", [c.__dict__ for c in checks])
        failed = [c for c in checks if not c.success]
        summary = {
            **expectations.outcome(checks),
            "test_in_train": int(table["test_in_train"].sum()),
            "test_in_pretraining": int(table["test_in_pretraining"].sum()),
            "manifest_digest": manifest_digest(manifest),
            "seconds": round(time.perf_counter() - start, 2),
        }
        write_json(out.metrics / "validate.json", summary)
        tracking.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        tracking.set_tags(
            {"validation.success": summary["success"], "data.manifest_digest": summary["manifest_digest"]}
        )
        tracking.log_artifacts(out.validation, "validation")
        if failed:
            out.validated_marker.unlink(missing_ok=True)
            raise DataValidationError(
                f"data validation failed; downstream stages will not run. Data Docs: "
                f"{out.validation / 'data_docs' / 'index.html'}\n{expectations.failure_report(failed)}"
            )
        write_json(out.validated_marker, {"manifest_digest": summary["manifest_digest"], "success": True})
    return summary


def _balance(spec: dict[str, Any], train: dense.DenseArrays) -> pd.DataFrame:
    """Per class: its boxes in train (detection) or the train scenes that hold its pixels (segmentation)."""
    import pandas as pd

    classes = spec["classes"]
    if spec["kind"] == "detection":
        counts = np.bincount(np.concatenate([labels for _, labels in train.boxes]), minlength=len(classes))
    else:
        present = [np.bincount(m[m != train.ignore].ravel(), minlength=len(classes)) > 0 for m in train.masks]
        counts = np.sum(present, axis=0)
    table = pd.DataFrame({"class_name": classes, "count": counts[: len(classes)].astype(int)})
    table["share"] = table["count"] / max(int(table["count"].sum()), 1)
    return table


def _boxes(splits: dict[str, dense.DenseArrays]) -> pd.DataFrame:
    """A row per box with the margins the suite checks: inside its image, positive width and height."""
    import pandas as pd

    table = pd.concat([dense.box_table(s, a) for s, a in splits.items()], ignore_index=True)
    table["right"], table["bottom"] = table["image_width"] - table["x2"], table["image_height"] - table["y2"]
    table["box_width"], table["box_height"] = table["x2"] - table["x1"], table["y2"] - table["y1"]
    return table


def _masks(splits: dict[str, dense.DenseArrays], classes: int) -> pd.DataFrame:
    """A row per mask: whether it has its image's size, and how many of its pixels hold an id out of range."""
    import pandas as pd

    rows = []
    for split, arrays in splits.items():
        for i, (image, mask) in enumerate(zip(arrays.images, arrays.masks, strict=True)):
            bad = int(((mask >= classes) & (mask != arrays.ignore)).sum())
            rows.append((split, arrays.files[i], mask.shape == image.shape[:2], bad))
    return pd.DataFrame(rows, columns=["split", "source", "size_matches", "ids_out_of_range"])


def finetune(project: Project, task: str) -> dict[str, Any]:
    """finetune@NAME for a dense task: both inits at every budget and draw, each with its trial chosen on held-out
    train scenes."""
    import torch

    from sslops.ml.device import Precision, machine, pick_device
    from sslops.ml.models import load_encoder_dir

    cfg, params, out = project.config("finetune"), project.config("tasks")[task], project.outputs(task)
    spec, splits = dense.open_store(out.prepared)
    train = splits["train"]
    device = pick_device(cfg.device)
    precision = Precision.resolve(cfg.amp, cfg.channels_last, device)
    name, record = project.model_name, project.register_record()
    run_params = {**cfg.dense.record(), "seed": cfg.seed, "draws": cfg.draws, "holdout": cfg.search.holdout}
    with tracking.stage_run(project, "finetune", {**run_params, "budgets": params.budgets}, task=task) as parent:
        ref = tracking.model_ref(cfg.model, record, name)
        with tracking.registered_encoder(name, ref, record) as (folder, version, digests):
            pretrained, _ = load_encoder_dir(folder, *digests)
        if pretrained.config.in_channels != spec["channels"]:
            raise SslopsError(
                f"task {task}'s scenes have {spec['channels']} channel(s) but the encoder takes "
                f"{pretrained.config.in_channels}: prepare the task again (dvc repro task_prepare@{task})."
            )
        torch.manual_seed(cfg.seed)
        encoders = {"pretrained": pretrained, "scratch": pretrained.untrained_copy()}
        tags = {"model.name": name, "model.version": version.version, "model.ref": cfg.model, "task": task}
        tags["pretrain.run_id"] = version.tags.get("pretrain.run_id", "unknown")
        tracking.set_tags({**tags, "finetune.amp": precision.amp})
        print(f"fine-tuning {name} version {version.version} on {spec['kind']} task {task}, {device}, {precision.amp}")
        fitter = _Fitter(spec, cfg.dense.trials, device, precision)
        started, entries, search = time.perf_counter(), [], {}
        with atomic_dir(out.finetune) as tmp:
            torch.save(encoders["scratch"].state_dict(), tmp / "scratch-encoder.pt")
            for budget in params.budgets:
                key, fraction = budget_key(budget), parse_budget(budget)[0]
                subsets = [_subset(len(train.files), fraction, cfg.seed + d) for d in range(_draws(fraction, cfg))]
                search[key] = {}
                for init, encoder in encoders.items():
                    trial, held = fitter.choose(train.take(subsets[0]), encoder, init, cfg.search.holdout, cfg.seed)
                    search[key][init] = {"trial": trial, "holdout": held}
                    for draw, subset in enumerate(subsets):
                        base = {"budget": key, "budget_name": budget_name(budget), "labels": len(subset)}
                        base |= {"init": init, "draw": draw, "trial": trial}
                        with tracking.child_run(f"{task}/{key}/d{draw}/{init}", {**base, **tags}):
                            model, stats = fitter.fit(train.take(subset), encoder, init, trial, cfg.seed + draw)
                            file = f"{init}-{key}-d{draw}.pt"
                            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp / file)
                            tracking.log_metrics(stats)
                            entries.append({**base, "file": file, "run_id": tracking.active_run_id()})
                        print(
                            f"  {init} {key} draw {draw}: '{trial}' {stats['steps']} steps in {stats['seconds']:.1f}s"
                        )
            model_record = {"name": name, "version": int(version.version), "run_id": version.run_id}
            model_record |= {"pretrain_run_id": tags["pretrain.run_id"], "encoder_sha256": digests.weights}
            model_record |= {"encoder_spec_sha256": digests.spec}
            index = {"model": model_record, "task": task, "kind": spec["kind"], "parent_run_id": parent.info.run_id}
            index |= {"seed": cfg.seed, "classes": spec["classes"], "entries": entries, "task_search": search}
            write_json(tmp / "index.json", index)
        metrics = {
            "models": len(entries),
            "seconds": round(time.perf_counter() - started, 1),
            "machine": machine(device),
        }
        write_json(out.metrics / "finetune.json", {**metrics, "search": search, "amp": precision.amp})
        tracking.log_metrics({"models": metrics["models"], "seconds": metrics["seconds"]})
        tracking.set_tags({"finetune.machine": metrics["machine"]})
        tracking.set_tags({f"search.{k}.{i}": c["trial"] for k, inits in search.items() for i, c in inits.items()})
        tracking.log_artifacts(out.finetune / "index.json")
    return {"model": f"{name}/{version.version}", "task": task, "models_trained": len(entries)}


def _draws(fraction: float | None, cfg: Any) -> int:
    """All train scenes are one subset; a smaller budget is drawn `finetune.draws` times."""
    return 1 if fraction == 1 else cfg.draws


def _subset(n: int, fraction: float | None, seed: int) -> np.ndarray:
    """The first `fraction` of a seeded order of the train scenes (at least 2, so one can be held out): nested across
    budgets within a draw, as the classification tasks' subsets are."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: max(2, round((fraction or 1.0) * n))])


class _Fitter:
    """Builds, trains and scores the dense models of one task (the recipe search and the fits share it)."""

    def __init__(
        self, spec: dict[str, Any], trials: dict[str, DenseRecipeParams], device: torch.device, precision: Any
    ):
        self.spec, self.trials, self.device, self.precision = spec, trials, device, precision

    def build(self, encoder: torch.nn.Module) -> torch.nn.Module:
        """A detector or segmenter on a copy of `encoder` (its weights as they are: pretrained or random)."""
        from sslops.ml import dense as ml

        backbone = ml.DenseBackbone(copy.deepcopy(encoder).cpu())
        if self.spec["kind"] == "detection":
            return ml.detector(backbone, len(self.spec["classes"]), size=(self.spec["height"], self.spec["width"]))
        return ml.Segmenter(backbone, len(self.spec["classes"]))

    def fit(
        self, data: dense.DenseArrays, encoder: torch.nn.Module, init: str, trial: str, seed: int
    ) -> tuple[torch.nn.Module, dict[str, float]]:
        from sslops.ml import dense as ml

        recipe = self.trials[trial].to_core(ml.DenseRecipe, seed=seed)
        how = ml.Fitting(recipe, init == "pretrained", self.device, self.precision, progress=True)
        model = self.build(encoder)
        images = np.asarray(data.images)
        if self.spec["kind"] == "detection":
            stats = ml.fit_detector(model, images, data.boxes, how)
        else:
            stats = ml.fit_segmenter(model, images, np.asarray(data.masks), data.ignore, how)
        return model, stats

    def score(self, model: torch.nn.Module, data: dense.DenseArrays) -> dict[str, Any]:
        """Test or held-out scores of one model: mAP, mAP@.5, the PR curve and the box confusion (detection); mIoU,
        per-class IoU and the pixel confusion (segmentation); with the predictions themselves (`found`)."""
        from sslops.ml import dense as ml

        images, classes = np.asarray(data.images), len(self.spec["classes"])
        if self.spec["kind"] == "detection":
            found = ml.detect(model, images, self.device)
            scores = ml.box_map(found, data.boxes)
            return {**scores, "confusion": ml.box_confusion(found, data.boxes, classes), "found": found}
        predicted = ml.segment(model, images, self.device)
        matrix = ml.confusion(predicted, np.asarray(data.masks), classes, data.ignore)
        iou, miou = ml.iou_scores(matrix)
        return {"miou": miou, "iou": iou, "confusion": matrix, "found": [{"mask": m} for m in predicted]}

    def choose(
        self, data: dense.DenseArrays, encoder: torch.nn.Module, init: str, holdout: float, seed: int
    ) -> tuple[str, dict[str, float]]:
        """The trial with the best held-out score (the earlier one on a tie) when trained on the rest of `data`; with
        one trial, that one, untried."""
        if len(self.trials) == 1:
            return next(iter(self.trials)), {}
        order = np.random.default_rng(seed).permutation(len(data.files))
        held = min(len(order) - 1, max(1, round(holdout * len(order))))  # at least one scene on each side
        rest, kept = data.take(np.sort(order[held:])), data.take(np.sort(order[:held]))
        metric = DENSE_METRICS[self.spec["kind"]][0]
        scores = {}
        for trial in self.trials:
            model, _ = self.fit(rest, encoder, init, trial, seed)
            scores[trial] = round(float(np.nan_to_num(self.score(model, kept)[metric])), 5)
        best = max(scores, key=lambda t: (scores[t], -list(scores).index(t)))
        print(f"  {init}: held-out {metric} {scores} -> '{best}'")
        return best, scores


def evaluate(project: Project, task: str) -> dict[str, Any]:
    """evaluate@NAME for a dense task: every model of the finetune stage scored on the test scenes, and drawn."""
    import torch

    from sslops.ml.device import machine, pick_device

    cfg, out = project.config("evaluate"), project.outputs(task)
    if not (out.finetune / "index.json").is_file():
        raise SslopsError(f"{out.finetune / 'index.json'} is missing: run the finetune stage first (dvc repro).")
    index = json.loads((out.finetune / "index.json").read_text())
    spec, splits = dense.open_store(out.prepared)
    test, model = splits["test"], index["model"]
    device = pick_device(cfg.device)
    fitter = _Fitter(spec, {}, device, None)
    metrics_of = DENSE_METRICS[spec["kind"]]
    with tracking.stage_run(project, "evaluate", cfg.record(), task=task) as run:
        tags = {"model.name": model["name"], "model.version": model["version"], "task": task}
        tags |= {"finetune.run_id": index["parent_run_id"], "pretrain.run_id": model["pretrain_run_id"]}
        tracking.set_tags({**tags, "evaluate.machine": machine(device)})
        started = time.perf_counter()
        encoders = _encoders(out.finetune, model)
        results, shown = [], {}
        for entry in index["entries"]:
            net = fitter.build(encoders[entry["init"]])
            net.load_state_dict(torch.load(out.finetune / entry["file"], map_location="cpu", weights_only=True))
            scored = fitter.score(net, test)
            result = {k: entry[k] for k in ("budget", "budget_name", "labels", "draw", "init", "trial", "run_id")}
            result |= {m: float(scored[m]) for m in metrics_of} | {"confusion": scored["confusion"].tolist()}
            if spec["kind"] == "detection":
                result["precision_50"] = [round(float(p), 5) for p in scored["precision_50"]]
            else:
                result["iou"] = [None if np.isnan(v) else round(float(v), 5) for v in scored["iou"]]
            results.append(result)
            tracking.log_metrics_to(entry["run_id"], {f"test.{m}": result[m] for m in metrics_of})
            if entry["draw"] == 0:  # the examples picture and the confusion table take their predictions
                shown[(entry["budget"], entry["init"])] = scored["found"]
        rows = _aggregate(results, metrics_of)
        summary = _headline(rows, metrics_of[0])
        with atomic_dir(out.evaluate) as tmp:  # a stage that fails on the way leaves no results of its own
            _draw(out.plots, tmp, task, cfg, spec, (results, rows, shown), test, encoders, device)
            record = {"model": model, "task": task, "kind": spec["kind"], "classes": spec["classes"]}
            write_json(
                tmp / "results.json", {**record, "results": results, "headline": summary, "run_id": run.info.run_id}
            )
        metrics = {
            f"test.{m}{s}.{r['budget']}.finetune.{r['init']}": round(r[f"{m}{s}"], 5)
            for r in rows
            for m in metrics_of
            for s in ("", "_std")
        }
        metrics |= {
            f"headline.{b}.{k}": (round(v, 5) if isinstance(v, float) else v)
            for b, h in summary.items()
            for k, v in h.items()
        }
        metrics |= {"seconds": round(time.perf_counter() - started, 1), "machine": machine(device)}
        write_json(out.metrics / "evaluate.json", metrics)
        tracking.log_metrics({k: v for k, v in metrics.items() if type(v) in (int, float)})
        tracking.log_artifacts(out.evaluate, "evaluation")
        for name in (
            "label_efficiency.png",
            "confusion.png",
            "embedding_map.png",
            "label_efficiency.csv",
            "confusion.csv",
        ):
            tracking.log_artifacts(out.plots / name, "evaluation")
    return {"run_id": run.info.run_id, "task": task, **{f"{b}.gain": round(h["gain"], 4) for b, h in summary.items()}}


def _encoders(finetuned: Path, model: dict[str, Any]) -> dict[str, torch.nn.Module]:
    """The registered version finetune used (its files checked against the recorded sha256s) and the scratch encoder
    finetune started from: the models' architectures, and what the embedding maps show."""
    import torch

    from sslops.ml.models import load_encoder_dir

    recorded = {"model_name": model["name"], "version": model["version"]}
    recorded |= {k: model.get(k) for k in ("encoder_sha256", "encoder_spec_sha256")}
    with tracking.registered_encoder(model["name"], str(model["version"]), recorded) as (folder, _, digests):
        pretrained, _ = load_encoder_dir(folder, *digests)
    scratch = pretrained.untrained_copy()
    scratch.load_state_dict(torch.load(finetuned / "scratch-encoder.pt", map_location="cpu", weights_only=True))
    return {"pretrained": pretrained, "scratch": scratch}


def _aggregate(results: list[dict[str, Any]], metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per (budget, init) over its label draws: each metric's mean, spread, min and max."""
    rows = []
    for budget, init in dict.fromkeys((r["budget"], r["init"]) for r in results):
        group = [r for r in results if (r["budget"], r["init"]) == (budget, init)]
        row = {k: group[0][k] for k in ("budget", "budget_name", "labels", "init", "trial")} | {"draws": len(group)}
        row["protocol"] = "finetune"
        for m in metrics:
            values = [r[m] for r in group]
            row |= {m: mean(values), f"{m}_std": spread(values), f"{m}_min": min(values), f"{m}_max": max(values)}
        rows.append(row)
    return rows


def _headline(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    """Per budget (fewest labels first): pretrained against scratch on the ranking metric, and the gain."""
    out = {}
    for row in sorted((r for r in rows if r["init"] == "pretrained"), key=lambda r: r["labels"]):
        scratch = next(r for r in rows if r["budget"] == row["budget"] and r["init"] == "scratch")
        out[row["budget"]] = {
            "labels": row["labels"],
            "metric": metric,
            "pretrained": row[metric],
            "pretrained_std": row[f"{metric}_std"],
            "scratch": scratch[metric],
            "scratch_std": scratch[f"{metric}_std"],
            "gain": row[metric] - scratch[metric],
        }
    return out


def _draw(
    figures: Path,
    evaluated: Path,
    task: str,
    cfg: Any,
    spec: dict[str, Any],
    scored: tuple[list[dict[str, Any]], list[dict[str, Any]], dict[tuple[str, str], list[dict]]],
    test: dense.DenseArrays,
    encoders: dict[str, torch.nn.Module],
    device: torch.device,
) -> None:
    """The DVC plots (label efficiency, confusion, embedding map) and the pictures logged with the results
    (examples of predictions beside the truth; precision-recall curves for boxes)."""
    from sslops.ml import dense as ml

    results, rows, shown = scored
    classes, metric = spec["classes"], DENSE_METRICS[spec["kind"]][0]
    names = {"map": "test mAP@[.5:.95] (%)", "miou": "test mIoU (%)"}
    with atomic_file(figures / "label_efficiency.png") as tmp:
        plots.label_efficiency(rows, tmp, f"Task {task}", metric=metric, ylabel=names[metric])
    lines = ["labels," + ",".join(f"finetune_{i}" for i in INITS)]
    for labels in sorted({r["labels"] for r in rows}):
        values = {r["init"]: r[metric] for r in rows if r["labels"] == labels}
        lines.append(f"{labels}," + ",".join(f"{values[i]:.5f}" if i in values else "" for i in INITS))
    with atomic_file(figures / "label_efficiency.csv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    smallest = min(rows, key=lambda r: r["labels"])["budget"]
    best = next(r for r in results if (r["budget"], r["init"], r["draw"]) == (smallest, "pretrained", 0))
    names_cm = classes + ["background"] if spec["kind"] == "detection" else classes
    what = "boxes matched at IoU 0.5" if spec["kind"] == "detection" else "pixels"
    title = f"pretrained, {best['labels']} scenes, {what}: {metric} {100 * best[metric]:.1f}%"
    cm = np.asarray(best["confusion"])
    with atomic_file(figures / "confusion.png") as tmp:
        plots.confusion(cm, names_cm, title, tmp)
    if spec["kind"] == "detection":  # a pair per true box and per false alarm
        pairs = [(t, p) for t in range(len(cm)) for p in range(len(cm)) for _ in range(cm[t, p])]
    else:  # a pair per object (a class's pixels in a scene), not per pixel
        predicted = np.stack([f["mask"] for f in shown[(smallest, "pretrained")]])
        pairs = ml.object_pairs(predicted, np.asarray(test.masks), test.ignore)
    with atomic_file(figures / "confusion.csv") as tmp:
        tmp.write_text("\n".join(["actual,predicted", *(f"{names_cm[t]},{names_cm[p]}" for t, p in pairs)]) + "\n")
    _embedding_map(figures / "embedding_map.png", cfg, spec, test, encoders, device)
    largest = max(rows, key=lambda r: r["labels"])["budget"]
    picked = test.take(np.arange(min(SHOWN, len(test.files))))
    truth = [
        {"boxes": b, "labels": labels} if spec["kind"] == "detection" else {"mask": m}
        for (b, labels), m in zip(
            picked.boxes, picked.masks if picked.masks is not None else [None] * len(picked.files), strict=True
        )
    ]
    name = next(r["budget_name"] for r in rows if r["budget"] == largest)
    panels = [("truth", truth)] + [(f"{init}, {name}", shown[(largest, init)][:SHOWN]) for init in INITS]
    plots.dense_examples(np.asarray(picked.images), panels, classes, evaluated / "examples.png", score_min=SCORE_SHOWN)
    if spec["kind"] == "detection":
        curves = {f"{r['init']}, {r['budget_name']}": np.asarray(r["precision_50"]) for r in results if r["draw"] == 0}
        plots.precision_recall(curves, evaluated / "precision_recall.png", f"Task {task}: IoU 0.5")


def _embedding_map(
    path: Path, cfg: Any, spec: dict[str, Any], test: dense.DenseArrays, encoders: dict, device: torch.device
) -> None:
    """t-SNE of each encoder's features pooled over the test objects (boxes, or one class's pixels per scene), at
    most `evaluate.map_points` of them, coloured by class."""
    from sslops.ml import dense as ml

    regions, labels = [], []
    height, width = spec["height"], spec["width"]
    for i in range(len(test.files)):
        masks = []
        if spec["kind"] == "detection":
            for (x1, y1, x2, y2), label in zip(*test.boxes[i], strict=True):
                region = np.zeros((height, width), dtype=bool)
                region[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
                masks.append(region)
                labels.append(int(label))
        else:
            mask = np.asarray(test.masks[i])
            for label in np.unique(mask):
                if 0 < label < len(spec["classes"]):  # 0 is background, not an object
                    masks.append(mask == label)
                    labels.append(int(label))
        regions.append(masks)
        if len(labels) >= cfg.map_points:
            break
    n = min(len(labels), cfg.map_points)
    if n < MIN_MAPPED:
        with atomic_file(path) as tmp:
            plots.message(f"{n} test object(s): too few for an embedding map", tmp)
        return
    images = np.asarray(test.images[: len(regions)])
    maps = {
        f"{init} encoder (t-SNE of {n} test objects)": plots.tsne_2d(
            ml.object_features(encoder, images, regions, device)[:n], cfg.seed, cfg.perplexity
        )
        for init, encoder in encoders.items()
    }
    with atomic_file(path) as tmp:
        plots.embedding_maps(maps, np.asarray(labels[:n]), spec["classes"], tmp)
