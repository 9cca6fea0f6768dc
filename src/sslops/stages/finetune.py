"""finetune: label-efficient transfer of the registered encoder to one downstream task (`--task NAME`).

The encoder comes from the MLflow registry (`finetune.model`: `candidate`, the version this project's register stage
wrote to metrics/register.json; or an alias or version number), never from a file path, so every result below names
the model version it used; its files are checked against the sha256s recorded at registration. The task's images
were prepared to the encoder's input (task_prepare). For each of the task's label budgets (`tasks.NAME.budgets`:
fractions or labels per class; class-balanced subsets of train, nested, fixed seed) and each initialisation
(pretrained; scratch = the same architecture at random init; pixels = the prepared pixels themselves) it fits the
protocols of `sslops.ml.transfer`: linear probe, kNN and LP-FT fine-tuning (not for pixels). One parent MLflow run
per task, one child run per (budget, init, protocol). The trained heads and networks go to
artifacts/tasks/NAME/finetune for `evaluate`.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sslops.adapters import tracking
from sslops.config import Project
from sslops.config.schema import Budget, FinetuneParams
from sslops.data.store import ImageStore
from sslops.errors import SslopsError
from sslops.outputs.atomic import atomic_dir

if TYPE_CHECKING:
    import torch

    from sslops.ml.models import Encoder


def run(project: Project, task: str | None = None) -> dict[str, Any]:
    import torch

    from sslops.ml.device import pick_device
    from sslops.ml.models import Pixels, input_shape, load_encoder_dir

    if task is None:
        raise SslopsError("finetune runs per downstream task: sslops finetune --task NAME (dvc.yaml: finetune@NAME).")
    cfg: FinetuneParams = project.config("finetune")
    budgets = project.config("tasks")[task].budgets
    name, out = project.model_name, project.outputs(task)
    device = pick_device(cfg.device)
    store = ImageStore.open(out.prepared)
    train = store.labelled("train")
    record = project.register_record()
    ref = _model_ref(record, cfg, name)
    with tracking.stage_run(project, "finetune", {**cfg.record(), "budgets": budgets}, task=task) as parent:
        with tracking.registered_encoder(name, ref, record) as (folder, version, digests):
            pretrained, spec = load_encoder_dir(folder, *digests)
        _check_input(spec, store, task)
        pretrain_run = version.tags.get("pretrain.run_id", "unknown")
        model_tags = {"model.name": name, "model.version": version.version, "model.ref": cfg.model}
        model_tags |= {"pretrain.run_id": pretrain_run, "task": task}
        tracking.set_tags(model_tags)
        print(f"fine-tuning {name} version {version.version} (ref '{cfg.model}') on task {task}, {device}")
        torch.manual_seed(cfg.seed)  # the scratch encoder: same architecture and normalisation, seeded init
        encoders = {
            "pretrained": pretrained,
            "scratch": pretrained.untrained_copy(),
            "pixels": Pixels(*input_shape(spec)),
        }
        with atomic_dir(out.finetune) as tmp:
            torch.save(encoders["scratch"].state_dict(), tmp / "scratch-encoder.pt")
            entries = [
                entry
                for init, encoder in encoders.items()
                for entry in _fit_init(tmp, cfg, budgets, store, train, init, encoder.to(device), model_tags, device)
            ]
            model = {"name": name, "version": int(version.version), "run_id": version.run_id}
            model |= {"pretrain_run_id": pretrain_run, "encoder_sha256": digests.weights}
            model |= {"encoder_spec_sha256": digests.spec}
            index = {"model": model, "task": task, "parent_run_id": parent.info.run_id, "seed": cfg.seed}
            index |= {"n_classes": int(train[1].max()) + 1, "entries": entries}
            (tmp / "index.json").write_text(json.dumps(index, indent=2))
        tracking.log_artifacts(out.finetune / "index.json")
    return {"model": f"{name}/{version.version}", "task": task, "models_trained": len(entries), "budgets": budgets}


def _check_input(spec: dict[str, Any], store: ImageStore, task: str) -> None:
    """The task's images must be what the encoder takes: task_prepare fits them to the pretraining input."""
    from sslops.ml.models import input_shape

    if tuple(store.images.shape[1:]) != input_shape(spec):
        raise SslopsError(
            f"task {task}'s images are {'x'.join(map(str, store.images.shape[1:]))} but the encoder takes "
            f"{'x'.join(map(str, input_shape(spec)))}: prepare the task again (dvc repro task_prepare@{task})."
        )


def _fit_init(
    folder: Path,
    cfg: FinetuneParams,
    budgets: list[Budget],
    store: ImageStore,
    train: tuple[np.ndarray, np.ndarray],
    init: str,
    encoder: Encoder,
    model_tags: dict[str, Any],
    device: torch.device,
) -> list[dict[str, Any]]:
    """Every label budget from one initialisation: the train features once, then `_fit_budget` per budget."""
    from sslops.ml.transfer import features

    started = time.perf_counter()
    train_feats = features(encoder, store.images[train[0]], device)
    print(f"{init}: features of {len(train[0])} train images in {time.perf_counter() - started:.1f}s")
    return [
        entry
        for budget in budgets
        for entry in _fit_budget(folder, cfg, store, (*train, train_feats), encoder, (budget, init, model_tags), device)
    ]


def _model_ref(record: dict[str, Any], cfg: FinetuneParams, name: str) -> str:
    """The version number or alias to load. `candidate` means the version this project's register stage wrote to
    metrics/register.json (`record`), by number, never the alias looked up again: on a shared server another
    register may have moved the alias since."""
    if str(cfg.model) != tracking.CANDIDATE:
        return str(cfg.model)
    if record.get("model_name") != name or "version" not in record:
        raise SslopsError(
            f"finetune.model 'candidate' means the version in metrics/register.json, which names no version of "
            f"{name}: run the register stage first (dvc repro register)."
        )
    return str(record["version"])


def _fit_budget(
    folder: Path,
    cfg: FinetuneParams,
    store: ImageStore,
    train: tuple[np.ndarray, np.ndarray, torch.Tensor],
    encoder: Encoder,
    run: tuple[Budget, str, dict[str, Any]],
    device: torch.device,
) -> list[dict[str, Any]]:
    """The protocols at one label budget for one init, each in its own child run; returns their index entries.

    `train` is (rows, labels, features) of the labelled train images; `run` is (budget, init, model tags).
    """
    import torch

    from sslops.ml.results import budget_key, budget_name, parse_budget
    from sslops.ml.transfer import Classifier, FinetuneConfig, balanced_subset, finetune, fit_linear_probe

    (train_rows, train_labels, train_feats), (budget, init, model_tags) = train, run
    n_classes = int(train_labels.max()) + 1
    subset = balanced_subset(train_labels, *parse_budget(budget), cfg.seed)
    x, y = train_feats[subset], torch.as_tensor(train_labels[subset])
    tag = budget_key(budget)
    base = {"budget": tag, "budget_name": budget_name(budget), "labels": len(subset), "init": init, **model_tags}
    entries = []

    def record(protocol: str, file: str) -> None:
        entries.append({**base, "protocol": protocol, "file": file, "run_id": tracking.active_run_id()})

    with tracking.child_run(f"{model_tags['task']}/{tag}/{init}/linear", {**base, "protocol": "linear"}):
        started = time.perf_counter()
        probe, wd = fit_linear_probe(x, y, n_classes, cfg.probe.weight_decays, cfg.seed, cfg.probe.iterations)
        torch.save(probe.state_dict(), folder / f"linear-{init}-{tag}.pt")
        tracking.log_metrics({"weight_decay": wd, "seconds": time.perf_counter() - started})
        record("linear", f"linear-{init}-{tag}.pt")
    with tracking.child_run(f"{model_tags['task']}/{tag}/{init}/knn", {**base, "protocol": "knn"}):
        np.save(folder / f"knn-{init}-{tag}.npy", train_rows[subset])  # a kNN classifier is its memory bank
        record("knn", f"knn-{init}-{tag}.npy")
    if init == "pixels":  # nothing to fine-tune: the baseline is what a classifier gets from the pixels alone
        print(f"  {init} {tag}: probe wd {wd:g}")
        return entries
    with tracking.child_run(f"{model_tags['task']}/{tag}/{init}/finetune", {**base, "protocol": "finetune"}):
        model = Classifier(copy.deepcopy(encoder), n_classes)
        model.head.load_state_dict(probe.state_dict())  # LP-FT: start from the probe
        stats = finetune(
            model.to(device),
            store.images[train_rows[subset]],
            train_labels[subset],
            cfg.recipe.to_core(FinetuneConfig, seed=cfg.seed),
            device,
            pretrained=init == "pretrained",
            progress=True,
        )
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, folder / f"finetune-{init}-{tag}.pt")
        tracking.log_metrics(stats)
        record("finetune", f"finetune-{init}-{tag}.pt")
    print(
        f"  {init} {tag}: probe wd {wd:g}, fine-tune {stats['steps']} steps in {stats['seconds']:.1f}s "
        f"(train acc {stats['train_acc']:.3f})"
    )
    return entries
