"""pretrain: self-supervised training of the encoder on the augmentation cache (or on-the-fly views).

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sslops.adapters import tracking
from sslops.adapters.provenance import code_digest, file_digest
from sslops.config import Project, params_hash
from sslops.config.schema import AugmentParams, PretrainParams
from sslops.data.store import ImageStore, manifest_digest
from sslops.errors import SslopsError
from sslops.outputs.atomic import atomic_dir, atomic_file, write_json

if TYPE_CHECKING:
    import torch

    from sslops.ml.methods import Method
    from sslops.ml.train import Batches, EpochStats


def run(project: Project) -> dict[str, Any]:
    import torch.distributed as dist

    try:
        return _run(project)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run(project: Project) -> dict[str, Any]:
    import torch

    from sslops.ml.device import amp_name, pick_device
    from sslops.ml.train import TrainConfig, pretrain, world

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
    on_epoch = _monitor(store, method, cfg, device)

    run_ctx = tracking.stage_run(project, "pretrain", cfg.record(), system_metrics=True) if rank == 0 else None
    with run_ctx or contextlib.nullcontext():
        started = time.perf_counter()
        setup = {"device": str(device), "amp": amp, "world_size": world_size}
        if rank == 0:
            tags = {f"pretrain.{k}": v for k, v in setup.items()}
            tracking.set_tags({**tags, "augment.cache_views": views, "data.manifest_digest": data_digest})
        train = cfg.to_core(TrainConfig)
        history = pretrain(method, batches, steps_per_epoch, train, device, checkpoint, fingerprint, on_epoch)
        if rank != 0:
            return {}
        summary = {**_summary(history), "seconds": round(time.perf_counter() - started, 1), **setup}
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
    else:
        from sslops.ml.augment import AugmentConfig, BatchAugment

        recipe, pool = BatchAugment(augment.to_core(AugmentConfig)), np.asarray(store.images[rows])

        def batches(epoch: int) -> Any:
            return view_sources.on_the_fly_pairs(pool, recipe, local_batch, epoch, seed, rank, world_size, device)

    return rows, int(index["views"]), batches, steps_per_epoch


def _build_method(store: ImageStore, rows: np.ndarray, cfg: PretrainParams, augment: AugmentParams) -> Method:
    """The configured method around a fresh encoder whose input normalisation fits the pretraining images."""
    from sslops.ml.methods import METHOD_CONFIGS, build_method
    from sslops.ml.models import BackboneConfig, Encoder

    sample = store.images[np.sort(np.random.default_rng(0).choice(rows, min(len(rows), 10000), replace=False))]
    pixels = sample.reshape(-1, sample.shape[-1]).astype(np.float64) / 255
    mean, std = pixels.mean(0).tolist(), np.maximum(pixels.std(0), 1e-3).tolist()
    height, width, channels = store.images.shape[1:]
    image_shape = (channels, augment.size or height, augment.size or width)  # what the views look like
    encoder = Encoder(cfg.backbone.to_core(BackboneConfig, in_channels=int(channels)), mean, std)
    try:
        return build_method(cfg.method_knobs.to_core(METHOD_CONFIGS[cfg.method]), encoder, image_shape)
    except ValueError as exc:  # knobs that do not fit the data, e.g. a mim.patch that does not divide the image
        raise SslopsError(f"pretrain.{cfg.method} in params.yaml: {exc}") from None


def _knn_sets(store: ImageStore, bank_size: int | None, seed: int) -> tuple[np.ndarray, ...]:
    """Labelled bank from train (subsampled to `bank_size` when set) and every labelled test image as queries."""
    bank_rows, bank_labels = store.labelled("train")
    query_rows, query_labels = store.labelled("test")
    if bank_size and bank_size < len(bank_rows):
        pick = np.sort(np.random.default_rng(seed).choice(len(bank_rows), bank_size, replace=False))
        bank_rows, bank_labels = bank_rows[pick], bank_labels[pick]
    return bank_rows, bank_labels, query_rows, query_labels


def _monitor(
    store: ImageStore, method: Method, cfg: PretrainParams, device: torch.device
) -> Callable[[EpochStats], dict[str, float]]:
    """The rank-0 hook after each epoch: kNN accuracy (a cheap subsampled bank, the whole train set at the end),
    plus, after the last epoch, the linear probe on all train labels that the register stage promotes on."""
    from sslops.ml.knn import knn_accuracy
    from sslops.ml.transfer import features, probe_accuracy

    monitor_sets = _knn_sets(store, cfg.knn.monitor_bank_size, cfg.seed)
    final_sets = _knn_sets(store, None, cfg.seed)

    def on_epoch(stats: EpochStats) -> dict[str, float]:
        last = stats.epoch == cfg.epochs - 1
        bank_rows, bank_labels, query_rows, query_labels = final_sets if last else monitor_sets
        bank = features(method.encoder, store.images[bank_rows], device)
        queries = features(method.encoder, store.images[query_rows], device)
        extra = {"knn_acc": knn_accuracy(bank, bank_labels, queries, query_labels, cfg.knn.k, cfg.knn.temperature)}
        if last:
            extra["linear_acc"] = probe_accuracy(
                bank, bank_labels, queries, query_labels, cfg.probe.weight_decay, cfg.probe.iterations, cfg.seed
            )
        print(
            f"epoch {stats.epoch + 1}: loss {stats.loss:.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in extra.items())
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
