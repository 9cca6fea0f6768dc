"""Shared fixtures: small synthetic datasets in every supported format, a throwaway project, and the
values tests build the ML core's configs with.

Synthetic images are class-dependent patterns plus noise, all distinct, so they pass validation and
are learnable; tests never download anything.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslops.data.idx import write_idx
from sslops.env import TELEMETRY_OFF

REPO = Path(__file__).resolve().parents[1]
CLASSES = [f"class{i}" for i in range(4)]

os.environ.update(TELEMETRY_OFF)
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Parallel workers (make test) share the cores: one torch thread each, in every process they start too (torch
    # is not imported yet). Otherwise each would start as many threads as there are cores, twice as many threads as
    # cores in all.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# make test runs each file in one worker (--dist loadfile: a file's tests in order, its module fixtures built once;
# `--dist loadgroup` with an xdist_group mark would do it per mark, but pytest-xdist 3.8 does not group under
# pytest 9: it renames `item._nodeid`, which pytest 9 no longer reads) and hands files out in collection order
# (--no-loadscope-reorder). The longest files go first, longest first, so that neither worker ends on a long file
# while the other idles: in one worker of two on a 2-core Zen 3 (2026-11-30, a make test of 1,142 s) they took 601,
# 412, 378, 337 and 123 s, 84 % of the suite's 2,212 s together.
LONGEST_FIRST = (
    "test_pipeline_dvc.py",
    "test_methods.py",
    "test_lineage.py",
    "test_flows.py",
    "test_stage_pretrain.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _tracking_uri_does_not_leak():
    """`mlflow.set_tracking_uri` (called by in-process stages) also exports MLFLOW_TRACKING_URI, so that MLflow's
    subprocesses inherit it. Between tests that would send a later test's DVC-started stages to an earlier test's
    store: each test starts and ends with the URI it found."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before)  # also resets MLflow's in-process global, not only the variable
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


# Test fixtures, not the pipeline's settings (those live in params.yaml, the only home of defaults): the ML
# core's config dataclasses have no defaults, so unit tests build them from these values, spelled out once.
# They are the values the core used to default to, so every test computes exactly what it did before.
AUGMENT = {
    "size": None,
    "crop_scale": (0.2, 1.0),
    "crop_ratio": (3 / 4, 4 / 3),
    "flip_p": 0.5,
    "jitter_p": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.1,
    "grayscale_p": 0.2,
    "blur_p": 0.0,
    "blur_sigma": (0.1, 2.0),
    "rotation": 0.0,
}
TRAIN = {
    "epochs": 10,
    "batch_size": 256,
    "optimizer": "lars",
    "base_lr": 0.3,
    "weight_decay": 1e-6,
    "momentum": 0.9,
    "warmup_epochs": 1.0,
    "final_lr_fraction": 0.0,
    "amp": "auto",
    "channels_last": "auto",
    "compile": False,
    "seed": 0,
}
BACKBONE = {"name": "small_cnn", "in_channels": 1, "width": 16, "small_stem": True, "pool": 1, "stem_width": None}
FINETUNE = {
    "optimizer": "sgd",
    "head": "probe",
    "epochs": 30,
    "max_steps": 300,
    "batch_size": 128,
    "lr": 0.05,
    "backbone_lr_scale": 0.1,
    "weight_decay": 5e-4,
    "crop_scale": (0.6, 1.0),
    "flip_p": 0.5,
    "seed": 0,
}
METHOD_KNOBS = {
    "simclr": {"proj_hidden": 512, "proj_dim": 128, "temperature": 0.2},
    "moco": {"proj_hidden": 512, "proj_dim": 128, "temperature": 0.2, "queue_size": 4096, "momentum": 0.99},
    "byol": {"proj_hidden": 512, "proj_dim": 128, "pred_hidden": 512, "base_momentum": 0.99},
    "mim": {"patch": 4, "mask_ratio": 0.5, "dec_hidden": 512},
    "rotation": {"hidden": 256},
    "simsiam": {"proj_hidden": 512, "proj_dim": 128, "pred_hidden": 32},
    "barlow": {"proj_hidden": 512, "proj_dim": 128, "lambda_offdiag": 0.0078},
    "vicreg": {"proj_hidden": 512, "proj_dim": 128, "sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0},
    "dino": {
        "proj_hidden": 512,
        "bottleneck_dim": 64,
        "out_dim": 1024,
        "teacher_temp": 0.04,
        "student_temp": 0.1,
        "center_momentum": 0.9,
        "base_momentum": 0.99,
        "local_crops": 2,
        "local_fraction": 0.43,
        "local_scale": (0.05, 0.4),
    },
    "dae": {"noise_p": 0.3, "noise_std": 0.2, "dec_hidden": 512},
    "jigsaw": {"grid": 2, "permutations": 24, "hidden": 256},
}
# The small_cnn of the tiny test projects, as a complete `pretrain.backbone` mapping of params.yaml.
TINY_BACKBONE = {"name": "small_cnn", "width": 4, "stem_width": None, "pool": 1, "small_stem": True}
TINY_EPOCH = 80  # pretrain.images of one epoch on the synthetic train split: 5 steps of batch 16
TASK = "fashion-mnist"  # the one downstream task of the test project, on the same synthetic data


def augment_config(**changes):
    """An `AugmentConfig` of the fixture values above, with `changes` applied (test fixture, not params.yaml)."""
    from sslops.ml.augment import AugmentConfig

    return AugmentConfig(**{**AUGMENT, **changes})


def train_config(**changes):
    """A `TrainConfig` of the fixture values above, with `changes` applied (test fixture, not params.yaml)."""
    from sslops.ml.train import TrainConfig

    return TrainConfig(**{**TRAIN, **changes})


def backbone_config(**changes):
    """A `BackboneConfig` of the fixture values above, with `changes` applied (test fixture, not params.yaml)."""
    from sslops.ml.models import BackboneConfig

    return BackboneConfig(**{**BACKBONE, **changes})


def finetune_config(**changes):
    """A `FinetuneConfig` of the fixture values above, with `changes` applied (test fixture, not params.yaml)."""
    from sslops.ml.transfer import FinetuneConfig

    return FinetuneConfig(**{**FINETUNE, **changes})


def method_config(name: str, **changes):
    """The knobs dataclass of method `name` (METHOD_CONFIGS) from the fixture values above, with `changes` applied;
    an unknown knob is a TypeError, as for any dataclass."""
    from sslops.ml.methods import METHOD_CONFIGS

    return METHOD_CONFIGS[name](**{**METHOD_KNOBS[name], **changes})


def synthetic_images(n: int, size: int = 12, channels: int = 1, n_classes: int = 4, seed: int = 0, noise: int = 40):
    """`n` distinct uint8 images (n, size, size, channels) and balanced labels; `noise` sets how hard they are."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    base = rng.integers(0, 256, size=(n_classes, size, size, channels))
    noise = rng.integers(-noise, noise + 1, size=(n, size, size, channels))
    images = np.clip(base[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def write_idx_dataset(
    folder: Path, n_train: int = 80, n_test: int = 20, size: int = 12, seed: int = 0, noise: int = 40
) -> None:
    """An MNIST-style folder (four uncompressed IDX files) of synthetic images."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic_images(n_train + n_test, size, seed=seed, noise=noise)
    for prefix, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images[sl, ..., 0])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels[sl])


def scene_items(folder: Path) -> Path:
    """Fashion-MNIST-shaped IDX files whose train items are all 200 and test items all 100 where inked."""
    folder.mkdir(parents=True)
    shape = np.zeros((28, 28), dtype=np.uint8)
    shape[4:24, 6:22] = 1
    for split, value, n in (("train", 200, 30), ("t10k", 100, 10)):
        write_idx(folder / f"{split}-images-idx3-ubyte", np.repeat(shape[None] * value, n, 0))
        write_idx(folder / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return folder


def write_imagefolder(root: Path, per_class: int = 3, size: int = 10, unlabeled: int = 2, rgb: bool = True) -> None:
    """`<root>/<split>/<class>/*.png` plus a flat `unlabeled/` folder."""
    c = 3 if rgb else 1
    n = per_class * len(CLASSES)
    images, labels = synthetic_images(2 * n + unlabeled, size, channels=c)
    i = 0
    for split in ("train", "test"):
        for k in range(n):
            folder = root / split / CLASSES[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i].squeeze()).save(folder / f"{k}.png")
            i += 1
    (root / "unlabeled").mkdir(parents=True, exist_ok=True)
    for k in range(unlabeled):
        Image.fromarray(images[i].squeeze()).save(root / "unlabeled" / f"u{k}.png")
        i += 1


def write_cifar(root: Path, per_batch: int = 8) -> None:
    """CIFAR-10 python batches with `per_batch` images each."""
    root.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic_images(6 * per_batch, 32, channels=3, n_classes=10)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": rows[sl], b"labels": labels[sl].tolist()}, fh)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)


def small_params(text: str) -> str:
    """params.yaml adjusted for tiny synthetic data (fewer rows, 4 classes, a seconds-long pretraining)."""
    import yaml

    params = yaml.safe_load(text)
    params["prepare"]["classes"] = CLASSES
    params["validate"]["min_rows"] = 10
    params["validate"]["min_class_share"] = 0.1
    params["validate"]["max_duplicate_share"] = 0.0
    params["augment"]["views"] = 2
    params["pretrain"].update(
        images=TINY_EPOCH,  # one epoch of 5 steps
        min_steps=1,
        batch_size=16,
        backbone=dict(TINY_BACKBONE),
        rotation={"hidden": 16},  # the default method; SimCLR for the tests that pick it
        simclr={"proj_hidden": 16, "proj_dim": 8, "temperature": 0.2},
        probe={"weight_decay": 1e-3, "iterations": 20},
    )
    params["tasks"] = {
        TASK: {
            "kind": "classification",
            "format": "idx",
            "root": "data/fashion-mnist",
            "classes": CLASSES,
            "budgets": [0.25, 1.0],
        }
    }
    params["finetune"].update(probe={"weight_decays": [1e-3, 1e-2], "iterations": 20})
    params["finetune"]["recipe"].update(epochs=2, max_steps=4, batch_size=16)
    params["evaluate"].update(knn={"k": 10, "temperature": 0.1}, map_points=40, perplexity=5)
    return yaml.safe_dump(params, sort_keys=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A throwaway project: dvc.yaml, small params.yaml, synthetic IDX data, its own MLflow store."""
    from sslops.config import Project

    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(small_params((REPO / "params.yaml").read_text()))
    write_idx_dataset(root / "data" / "fashion-mnist")
    monkeypatch.setenv("SSLOPS_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Project(root)


def run_task(task: str = TASK, stages: tuple[str, ...] = ("prepare", "validate", "finetune", "evaluate")) -> None:
    """The task stages of `task`, in process through the CLI (as dvc.yaml's task_prepare@task ... evaluate@task)."""
    from sslops.cli import main

    for stage in stages:
        assert main([stage, "--task", task]) == 0, f"{stage} --task {task}"


@pytest.fixture
def pretrained(project):
    """`project` after prepare, validate, augment and pretrain, run in process through the CLI."""
    from sslops.cli import main

    for stage in ("prepare", "validate", "augment", "pretrain"):
        assert main([stage]) == 0, stage
    return project


def set_param(project_root: Path, section: str, key: str, value) -> None:
    """Set `<section>.<key>` in the project's params.yaml."""
    import yaml

    path = project_root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def mlflow_runs(root: Path):
    """All runs in the project's SQLite store, newest first, as MLflow Run objects."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments], order_by=["attributes.start_time DESC"])
