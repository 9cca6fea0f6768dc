"""pretrain: self-supervised training of the encoder on the augmentation cache (or on-the-fly views).

The training itself never reads a label. The budget is `pretrain.images` (images seen), so the number of epochs
follows from the dataset's size and a small dataset gets a schedule that fits it; fewer optimiser steps than
`pretrain.min_steps` is warned about. The monitor (kNN after every epoch, a linear probe after the last, which the
register stage promotes on) scores a seeded validation split carved from the labelled train images
(`pretrain.val_fraction`), never the test split: test is touched only by the evaluate stage.

Runs as `python -m sslops pretrain` on CPU/one GPU, or `torchrun --nproc_per_node=N -m sslops pretrain`
for DDP. Only rank 0 logs to MLflow and writes outputs. Resumes from artifacts/checkpoints/ when the
checkpoint's fingerprint (params, cache, data, code, torch) matches; writes the encoder state_dict as the output.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sslops.adapters import tracking
from sslops.adapters.provenance import code_digest, file_digest
from sslops.config import Project, params_hash
from sslops.config.schema import AugmentParams, PretrainParams
from sslops.data.decode import cores
from sslops.data.store import ImageStore, manifest_digest, rows_digest
from sslops.errors import SslopsError
from sslops.outputs.atomic import atomic_dir, atomic_file, write_json

if TYPE_CHECKING:
    import torch

    from sslops.ml.methods import Method
    from sslops.ml.train import Batches, EpochStats, TrainConfig


def run(project: Project) -> dict[str, Any]:
    import torch.distributed as dist

    try:
        return _run(project)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run(project: Project) -> dict[str, Any]:
    import torch

    from sslops.ml.device import amp_name, machine, pick_device
    from sslops.ml.train import pretrain, world

    cfg: PretrainParams = project.config("pretrain")
    augment: AugmentParams = project.config("augment")
    _init_distributed()
    rank, world_size = world()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    store = ImageStore.open(project.prepared_dir)
    device = pick_device(cfg.device)
    amp = amp_name(cfg.amp, device)  # what `auto` became on this machine
    rows, views, batches, steps_per_epoch = _view_source(project, store, augment, cfg, device, rank, world_size)
    method = _build_method(store, rows, cfg, augment)
    data_digest = manifest_digest(store.manifest)
    fingerprint = checkpoint_fingerprint(cfg, augment, world_size, data_digest, amp, views)
    checkpoint = project.root / "artifacts" / "checkpoints" / "pretrain.pt"
    train = schedule(cfg, steps_per_epoch, warn=print if rank == 0 else lambda _: None)
    split = validation_split(store, cfg.val_fraction, cfg.val_seed)
    if rank == 0 and len(split.val_rows) < FEW_VALIDATION_IMAGES:
        print(small_validation_warning(len(split.val_rows)))
    on_epoch = _monitor(store, method, cfg, split, train.epochs, device)

    run_ctx = tracking.stage_run(project, "pretrain", cfg.record(), system_metrics=True) if rank == 0 else None
    with run_ctx or contextlib.nullcontext():
        started = time.perf_counter()
        setup = {"device": str(device), "machine": machine(device), "amp": amp, "world_size": world_size}
        if rank == 0:
            tags = {f"pretrain.{k}": v for k, v in setup.items()} | {"pretrain.epochs": train.epochs}
            tags |= {"augment.cache_views": views, "data.manifest_digest": data_digest}
            tracking.set_tags({**tags, "monitor.val_digest": split.digest, "monitor.val_images": len(split.val_rows)})
        history = pretrain(method, batches, steps_per_epoch, train, device, checkpoint, fingerprint, on_epoch)
        if rank != 0:
            return {}
        summary = {**_summary(history), "seconds": round(time.perf_counter() - started, 1), **setup}
        summary |= {"val_images": len(split.val_rows), "val_digest": split.digest}
        out = _write_encoder(project.root / "artifacts" / "pretrain", method, cfg, store)
        _write_curve(project.root / "plots" / "pretrain.csv", history)
        write_json(project.metrics_dir / "pretrain.json", summary)
        tracking.log_metrics({f"final.{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
        tracking.log_artifacts(out, "encoder")
        # How the register stage finds this run from the weights alone (DVC may restore them from its cache).
        tracking.set_tags({"encoder.sha256": file_digest(out / "encoder.pt")})
    return summary


def _summary(history: list[EpochStats]) -> dict[str, Any]:
    """metrics/pretrain.json's figures of the run: the last epoch's loss and monitors, speed and time."""
    last = history[-1]
    return {
        "epochs": len(history),
        "steps": last.step,
        "loss": round(last.loss, 5),
        "knn_acc": round(last.extra["knn_acc"], 5),
        "linear_acc": round(last.extra["linear_acc"], 5),
        "images_per_s": round(float(np.mean([h.images_per_s for h in history])), 1),
        "train_seconds": round(sum(h.seconds for h in history), 1),
    }


def checkpoint_fingerprint(
    cfg: PretrainParams, augment: AugmentParams, world_size: int, data: str, amp: str, views: int
) -> str:
    """What a checkpoint must share with this run to be resumed: params, cache recipe, data, world size, the resolved
    AMP (`auto` differs per CPU), the code of the sslops package and the torch version. Anything else starts fresh,
    so a finished run of older code is never published as the result of new code."""
    import torch

    return params_hash(
        {
            "views": views,  # what the cache holds: its plan may cache fewer than augment.views (disk budget)
            "params": cfg.record(),
            "augment": augment.record(),
            "world": world_size,
            "data": data,
            "amp": amp,
            "code": code_digest(),
            "torch": torch.__version__,
        }
    )


def _init_distributed() -> None:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPUs)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)


def _view_source(
    project: Project,
    store: ImageStore,
    augment: AugmentParams,
    cfg: PretrainParams,
    device: torch.device,
    rank: int,
    world_size: int,
) -> tuple[np.ndarray, int, Batches, int]:
    """(pretraining rows, cached views per image, batches(epoch), steps per epoch): cached views, else on the fly."""
    from sslops.ml import views as view_sources

    cache_dir = project.root / "artifacts" / "augment"
    if not (cache_dir / view_sources.INDEX).is_file():
        raise SslopsError(
            f"{cache_dir / view_sources.INDEX} is missing: run the augment stage first (dvc repro augment)."
        )
    index = json.loads((cache_dir / view_sources.INDEX).read_text())
    rows = np.asarray(index["rows"], dtype=np.int64)
    if cfg.batch_size % world_size:
        raise SslopsError(f"pretrain.batch_size {cfg.batch_size} must divide evenly across {world_size} processes.")
    local_batch = cfg.batch_size // world_size
    steps_per_epoch = (len(rows) // world_size) // local_batch
    if steps_per_epoch == 0:
        raise SslopsError(f"pretrain.batch_size {cfg.batch_size} is larger than the {len(rows)} pretraining images.")
    seed = cfg.seed
    if index["views"]:
        cache = view_sources.ViewCache.open(cache_dir)

        def batches(epoch: int) -> Any:
            return view_sources.cached_pairs(cache, local_batch, epoch, seed, rank, world_size)
    elif store.encoded:  # decoded batch by batch in loader workers: memory holds a few batches, not the store
        from sslops.ml.augment import AugmentConfig, BatchAugment

        workers = min(cores(), MAX_DECODE_WORKERS) if cfg.decode_workers is None else cfg.decode_workers
        stream = view_sources.JpegStream(
            store.images,
            rows,
            BatchAugment(augment.to_core(AugmentConfig)),
            local_batch,
            seed,
            device,
            workers,
            rank,
            world_size,
        )
        batches = stream.pairs
    else:
        from sslops.ml.augment import AugmentConfig, BatchAugment

        recipe, pool = BatchAugment(augment.to_core(AugmentConfig)), np.asarray(store.images[rows])

        def batches(epoch: int) -> Any:
            return view_sources.on_the_fly_pairs(pool, recipe, local_batch, epoch, seed, rank, world_size, device)

    return rows, int(index["views"]), batches, steps_per_epoch


def _build_method(store: ImageStore, rows: np.ndarray, cfg: PretrainParams, augment: AugmentParams) -> Method:
    """The configured method around a fresh encoder whose input normalisation fits the pretraining images."""
    from sslops.ml.models import pixel_statistics

    return build_method_for(store.images.shape[1:], *pixel_statistics(store.images, rows), cfg, augment)


def build_method_for(
    shape: tuple[int, int, int], mean: list[float], std: list[float], cfg: PretrainParams, augment: AugmentParams
) -> Method:
    """The configured method around a fresh encoder for images of `shape` (H, W, C) normalised by `mean`, `std`:
    what the stage trains, and what `sslops estimate` times a step of before any image is prepared."""
    from sslops.config.validation import method_knobs
    from sslops.ml.augment import view_size
    from sslops.ml.methods import METHOD_CONFIGS, build_method
    from sslops.ml.models import BackboneConfig, Encoder, resolve_backbone

    knobs = method_knobs(cfg, METHOD_CONFIGS)  # every method's knobs against its declaration, before any work
    height, width, channels = shape
    image_shape = (channels, *view_size(augment.size, height, width))  # what the views look like
    backbone = resolve_backbone(cfg.backbone.to_core(BackboneConfig, in_channels=int(channels)), min(image_shape[1:]))
    encoder = Encoder(backbone, mean, std)
    try:
        return build_method(knobs, encoder, image_shape)
    except ValueError as exc:  # knobs that do not fit the data, e.g. a mim.patch that does not divide the image
        raise SslopsError(f"pretrain.{cfg.method} in params.yaml: {exc}") from None


def schedule(cfg: PretrainParams, steps_per_epoch: int, warn: Callable[[str], None]) -> TrainConfig:
    """The training config with epochs derived from the budget in images seen (`pretrain.images`).

    A fixed budget in images (optimiser steps at a given batch) rather than epochs: 10 epochs are 2,340 steps on
    Fashion-MNIST but 50 on a folder of 1,300 images, far too few to learn anything. Warmup is a share of the steps.
    """
    from sslops.ml.train import TrainConfig, epochs_for

    epochs = epochs_for(cfg.images, cfg.batch_size, steps_per_epoch)
    steps = epochs * steps_per_epoch
    if steps < cfg.min_steps:
        warn(
            f"pretrain: warning: {steps} optimiser steps ({epochs} epochs of {steps_per_epoch}) is below "
            f"pretrain.min_steps ({cfg.min_steps}): too short to learn much. Raise pretrain.images (now "
            f"{cfg.images:,}) or lower pretrain.batch_size."
        )
    return cfg.to_core(TrainConfig, epochs=epochs, warmup_epochs=cfg.warmup_fraction * epochs)


@dataclass(frozen=True)
class ValidationSplit:
    """The monitor's data: a seeded share of the labelled train images (queries) and the rest (kNN bank, probe)."""

    bank_rows: np.ndarray
    bank_labels: np.ndarray
    val_rows: np.ndarray
    val_labels: np.ndarray
    digest: str  # of the validation images and labels: promotion compares only versions scored on the same


MAX_DECODE_WORKERS = 8  # `decode_workers: null`: every core up to this; more decode faster than one GPU trains
FEW_VALIDATION_IMAGES = 500  # under this, the monitor's accuracies (and the promotion they decide) are coarse


def small_validation_warning(n: int) -> str:
    """What a validation split of `n` images is worth: the standard error of an accuracy near 90 % on it."""
    error = 100 * (0.9 * 0.1 / n) ** 0.5
    return (
        f"pretrain: warning: the validation split holds {n} images (pretrain.val_fraction of the labelled train "
        f"images): its kNN and linear accuracies, and the promotion that register decides on them, are within about "
        f"±{error:.1f} points (one standard error at 90 %). More labelled train images, or a larger val_fraction, "
        "make them finer."
    )


def validation_split(store: ImageStore, fraction: float, seed: int) -> ValidationSplit:
    """Carve `fraction` of the labelled train images, seeded, as the validation split; the test split is not read."""
    rows, labels = store.labelled("train")
    n_val = max(1, round(fraction * len(rows)))
    if n_val >= len(rows):
        raise SslopsError(f"pretrain.val_fraction {fraction} leaves no labelled train images for the kNN bank.")
    val = np.zeros(len(rows), dtype=bool)
    val[np.random.default_rng(seed).permutation(len(rows))[:n_val]] = True
    digest = rows_digest(store.manifest, rows[val])
    return ValidationSplit(rows[~val], labels[~val], rows[val], labels[val], digest)


def _monitor(
    store: ImageStore, method: Method, cfg: PretrainParams, split: ValidationSplit, epochs: int, device: torch.device
) -> Callable[[EpochStats], dict[str, float]]:
    """The rank-0 hook after each epoch: kNN accuracy on the validation split (a subsampled bank, the whole bank at
    the end), plus, after the last epoch, the linear probe that the register stage promotes on."""
    from sslops.ml.knn import knn_accuracy
    from sslops.ml.transfer import features, probe_accuracy

    bank_rows, bank_labels = split.bank_rows, split.bank_labels
    small = cfg.knn.monitor_bank_size
    if small and small < len(bank_rows):
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(bank_rows), small, replace=False))
        small_bank = (bank_rows[pick], bank_labels[pick])
    else:
        small_bank = (bank_rows, bank_labels)

    def on_epoch(stats: EpochStats) -> dict[str, float]:
        last = stats.epoch == epochs - 1
        rows, labels = (bank_rows, bank_labels) if last else small_bank
        bank = features(method.encoder, store.take(rows), device)
        queries = features(method.encoder, store.take(split.val_rows), device)
        extra = {"knn_acc": knn_accuracy(bank, labels, queries, split.val_labels, cfg.knn.k, cfg.knn.temperature)}
        if last:
            extra["linear_acc"] = probe_accuracy(
                bank, labels, queries, split.val_labels, cfg.probe.weight_decay, cfg.probe.iterations, cfg.seed
            )
        print(
            f"epoch {stats.epoch + 1}/{epochs}: loss {stats.loss:.4f}  "
            + "  ".join(f"val {k} {v:.4f}" for k, v in extra.items())
            + f"  {stats.images_per_s:.0f} img/s"
        )
        tracking.log_metrics(
            {"loss": stats.loss, "lr": stats.lr, "images_per_s": stats.images_per_s, **extra}, step=stats.epoch + 1
        )
        return extra

    return on_epoch


def _write_encoder(out: Path, method: Method, cfg: PretrainParams, store: ImageStore) -> Path:
    """artifacts/pretrain: the encoder's state_dict and encoder.json, everything needed to rebuild it."""
    import torch

    encoder = method.encoder
    spec = {
        "backbone": encoder.config.to_dict(),
        "mean": encoder.channel_mean,
        "std": encoder.channel_std,
        "feature_dim": encoder.feature_dim,
        "method": cfg.method,
        "image_shape": list(store.images.shape[1:]),
    }
    with atomic_dir(out) as tmp:
        torch.save({k: v.cpu() for k, v in encoder.state_dict().items()}, tmp / "encoder.pt")
        (tmp / "encoder.json").write_text(json.dumps(spec, indent=2))
    return out


def _write_curve(path: Path, history: list[EpochStats]) -> None:
    """plots/pretrain.csv: one row per epoch, shown by `dvc plots show`."""
    lines = ["epoch,step,loss,lr,knn_acc,images_per_s"]
    lines += [
        f"{h.epoch + 1},{h.step},{h.loss:.6f},{h.lr:.6g},{h.extra.get('knn_acc', float('nan')):.5f},"
        f"{h.images_per_s:.1f}"
        for h in history
    ]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
