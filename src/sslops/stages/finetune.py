"""finetune: label-efficient transfer of the registered encoder, beside the same recipes from random init.

The encoder comes from the MLflow registry (`finetune.model`: an alias such as `candidate`, or a version
number), never from a file path, so every result below names the model version it used. For each label
fraction (class-balanced subsets of train, nested, fixed seed) and each initialisation (pretrained,
scratch = the same architecture at random init) it fits the three protocols of `sslops.ml.transfer`:
linear probe, kNN and LP-FT fine-tuning. One parent MLflow run, one child run per
(fraction, init, protocol). The trained heads and networks go to artifacts/finetune for `evaluate`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import fields
from typing import Any

import numpy as np

from sslops import tracking
from sslops.atomic import atomic_dir
from sslops.config import Project
from sslops.data.store import ImageStore
from sslops.errors import SslopsError

INITS = ("pretrained", "scratch")
PROTOCOLS = ("linear", "knn", "finetune")


def labelled(store: ImageStore, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows and labels of the labelled images of a split (the unlabeled pool has label -1)."""
    rows, labels = store.split(split)
    keep = labels >= 0
    if not keep.any():
        raise SslopsError(f"the {split} split has no labelled images: finetune and evaluate need labels.")
    return rows[keep], labels[keep].astype(np.int64)


def recipe(params: dict[str, Any], seed: int):
    """FinetuneConfig from `finetune.recipe`: unknown keys named, numbers coerced (YAML 1.1 reads `5e-2` as text)."""
    from sslops.ml.transfer import FinetuneConfig

    values = dict(params.get("recipe") or {})
    types = {f.name: f.type for f in fields(FinetuneConfig)}
    if set(values) - set(types):
        raise SslopsError(f"unknown finetune.recipe keys: {', '.join(sorted(set(values) - set(types)))} (known: {', '.join(sorted(types))}).")
    for key, value in values.items():
        try:
            if types[key] in ("int", "float"):
                values[key] = int(value) if types[key] == "int" else float(value)
            elif isinstance(value, list):
                values[key] = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise SslopsError(f"finetune.recipe.{key} in params.yaml must be numeric, not {value!r}.") from None
    return FinetuneConfig(**{**values, "seed": seed})


def fractions(params: dict[str, Any]) -> list[float]:
    try:
        values = [float(f) for f in params.get("fractions", [0.01, 0.1, 1.0])]
    except (TypeError, ValueError):
        values = []
    if not values or any(not 0 < f <= 1 for f in values):
        raise SslopsError(f"finetune.fractions must be numbers in (0, 1], got {params.get('fractions')}.")
    return sorted(set(values))


def scratch_encoder(encoder, seed: int):
    """The same architecture and input normalisation at random initialisation (seeded)."""
    import torch

    torch.manual_seed(seed)
    return encoder.untrained_copy()


def run(project: Project) -> dict[str, Any]:
    import torch

    from sslops.ml.train import pick_device
    from sslops.ml.transfer import Classifier, balanced_subset, features, finetune, fit_linear_probe

    params, name = project.section("finetune"), str(project.section("register").get("model_name", "sslops-encoder"))
    seed = int(params.get("seed", 0))
    cfg, fracs = recipe(params, seed), fractions(params)
    probe_params = params.get("probe") or {}
    weight_decays = [float(w) for w in probe_params.get("weight_decays", [1e-3])]
    iterations = int(probe_params.get("iterations", 100))
    device = pick_device(str(params.get("device", "auto")))
    store = ImageStore.open(project.prepared_dir)
    train_rows, train_labels = labelled(store, "train")
    n_classes = int(train_labels.max()) + 1

    with tracking.stage_run(project, "finetune", params) as parent:
        version = tracking.resolve_version(name, str(params.get("model", "candidate")))
        pretrained = tracking.load_encoder(name, version.version)
        model_tags = {"model.name": name, "model.version": version.version, "model.ref": params.get("model", "candidate"),
                      "pretrain.run_id": version.tags.get("pretrain.run_id", "unknown")}
        tracking.set_tags(model_tags)
        print(f"fine-tuning {name} version {version.version} (ref '{params.get('model', 'candidate')}') on {device}")
        encoders = {"pretrained": pretrained, "scratch": scratch_encoder(pretrained, seed)}
        entries: list[dict[str, Any]] = []
        out = project.root / "artifacts" / "finetune"
        with atomic_dir(out) as tmp:
            torch.save(encoders["scratch"].state_dict(), tmp / "scratch-encoder.pt")
            for init, encoder in encoders.items():
                encoder.to(device)
                started = time.perf_counter()
                train_feats = features(encoder, store.images[train_rows], device)
                print(f"{init}: features of {len(train_rows)} train images in {time.perf_counter() - started:.1f}s")
                for frac in fracs:
                    subset = balanced_subset(train_labels, frac, seed)
                    x, y = train_feats[subset], torch.as_tensor(train_labels[subset])
                    tag = f"frac_{frac:g}"
                    base = {"fraction": frac, "labels": len(subset), "init": init, **model_tags}

                    with tracking.child_run(f"{tag}/{init}/linear", {**base, "protocol": "linear"}):
                        t = time.perf_counter()
                        probe, wd = fit_linear_probe(x, y, n_classes, weight_decays, seed, iterations)
                        torch.save(probe.state_dict(), tmp / f"linear-{init}-{tag}.pt")
                        tracking.log_metrics({"weight_decay": wd, "seconds": time.perf_counter() - t})
                        entries.append({**base, "protocol": "linear", "file": f"linear-{init}-{tag}.pt", "run_id": tracking.active_run_id()})

                    with tracking.child_run(f"{tag}/{init}/knn", {**base, "protocol": "knn"}):
                        np.save(tmp / f"knn-{init}-{tag}.npy", train_rows[subset])  # a kNN classifier is its memory bank
                        entries.append({**base, "protocol": "knn", "file": f"knn-{init}-{tag}.npy", "run_id": tracking.active_run_id()})

                    with tracking.child_run(f"{tag}/{init}/finetune", {**base, "protocol": "finetune"}):
                        model = Classifier(copy.deepcopy(encoder), n_classes)
                        model.head.load_state_dict(probe.state_dict())  # LP-FT: start from the probe
                        stats = finetune(model.to(device), store.images[train_rows[subset]], train_labels[subset], cfg, device,
                                         pretrained=init == "pretrained", progress=True)
                        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp / f"finetune-{init}-{tag}.pt")
                        tracking.log_metrics(stats)
                        entries.append({**base, "protocol": "finetune", "file": f"finetune-{init}-{tag}.pt", "run_id": tracking.active_run_id()})
                    print(f"  {init} {tag}: {len(subset)} labels, probe wd {wd:g}, fine-tune {stats['steps']} steps "
                          f"in {stats['seconds']:.1f}s (train acc {stats['train_acc']:.3f})")
            index = {"model": {"name": name, "version": int(version.version), "run_id": version.run_id,
                               "pretrain_run_id": model_tags["pretrain.run_id"]},
                     "parent_run_id": parent.info.run_id, "seed": seed, "n_classes": n_classes, "entries": entries}
            (tmp / "index.json").write_text(json.dumps(index, indent=2))
        tracking.log_artifacts(out / "index.json")
    return {"model": f"{name}/{version.version}", "models_trained": len(entries), "fractions": fracs}
