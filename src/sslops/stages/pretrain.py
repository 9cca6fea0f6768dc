"""pretrain: self-supervised training of the encoder on the augmentation cache (or on-the-fly views).

Runs as `python -m sslops pretrain` on CPU/one GPU, or `torchrun --nproc_per_node=N -m sslops pretrain`
for DDP. Only rank 0 logs to MLflow and writes outputs. Resumes from artifacts/checkpoints/ when the
checkpoint's fingerprint (params + cache + data) matches; writes the encoder state_dict as the output.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import fields
from typing import Any

import numpy as np

from sslops import tracking
from sslops.atomic import atomic_dir, write_json
from sslops.config import Project, params_hash
from sslops.data.store import ImageStore, manifest_digest
from sslops.errors import SslopsError
from sslops.provenance import file_digest
from sslops.stages.augment import augment_config

PROFILE_KEYS = ("profile", "profiles")


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    """`pretrain` params with the selected profile (`pretrain.profile`) merged over the defaults."""
    profile = params.get("profile")
    profiles = params.get("profiles") or {}
    if profile and profile not in profiles:
        raise SslopsError(f"pretrain.profile '{profile}' is not one of pretrain.profiles: {', '.join(profiles) or 'none'}.")
    merged = {k: v for k, v in params.items() if k not in PROFILE_KEYS}
    for key, value in (profiles.get(profile) or {}).items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def _train_config(params: dict[str, Any]):
    """TrainConfig from params, with numbers coerced: YAML 1.1 reads `5e-4` (no dot) as a string."""
    from sslops.ml.train import TrainConfig

    values = {}
    for f in fields(TrainConfig):
        if f.name not in params:
            continue
        value = params[f.name]
        if f.type in ("float", "int") and isinstance(value, str):
            try:
                value = float(value) if f.type == "float" else int(value)
            except ValueError:
                raise SslopsError(f"pretrain.{f.name} in params.yaml must be a number, not {value!r}.") from None
        values[f.name] = value
    return TrainConfig(**values)


def _check_choices(params: dict[str, Any]) -> None:
    """Name a mistyped method, backbone, optimiser or AMP setting up front, as a user error rather than a traceback."""
    from sslops.ml.methods import METHODS
    from sslops.ml.models import BACKBONES
    from sslops.ml.optim import OPTIMIZERS
    from sslops.ml.train import AMP_SETTINGS

    for key, value, allowed in (
        ("method", params.get("method", "simclr"), METHODS),
        ("backbone.name", (params.get("backbone") or {}).get("name", "small_cnn"), BACKBONES),
        ("optimizer", params.get("optimizer", "lars"), OPTIMIZERS),
        ("amp", params.get("amp", "auto"), AMP_SETTINGS),
    ):
        if value not in allowed:
            raise SslopsError(f"pretrain.{key} '{value}' in params.yaml is not one of: {', '.join(allowed)}.")


def _init_distributed():
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPUs)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)


def _channel_stats(store: ImageStore, rows: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] from a sample of pretraining images (for input normalisation)."""
    sample = store.images[np.sort(np.random.default_rng(0).choice(rows, min(len(rows), 10000), replace=False))]
    pixels = sample.reshape(-1, sample.shape[-1]).astype(np.float64) / 255
    return pixels.mean(0).tolist(), np.maximum(pixels.std(0), 1e-3).tolist()


def _knn_sets(store: ImageStore, bank_size: int | None, seed: int):
    """Labelled bank from train (subsampled to `bank_size` when set) and every labelled test image as queries."""
    (bank_rows, bank_labels), (query_rows, query_labels) = (store.split(s) for s in ("train", "test"))
    bank_keep, query_keep = bank_labels >= 0, query_labels >= 0
    bank_rows, bank_labels = bank_rows[bank_keep], bank_labels[bank_keep]
    if bank_size and bank_size < len(bank_rows):
        pick = np.sort(np.random.default_rng(seed).choice(len(bank_rows), int(bank_size), replace=False))
        bank_rows, bank_labels = bank_rows[pick], bank_labels[pick]
    return bank_rows, bank_labels, query_rows[query_keep], query_labels[query_keep]


def run(project: Project) -> dict[str, Any]:
    import torch.distributed as dist

    try:
        return _run(project)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run(project: Project) -> dict[str, Any]:
    import torch

    from sslops.ml import views as view_sources
    from sslops.ml.knn import knn_accuracy
    from sslops.ml.transfer import features, probe_accuracy
    from sslops.ml.methods import build_method
    from sslops.ml.models import BackboneConfig, Encoder
    from sslops.ml.train import amp_name, pick_device, pretrain, world

    raw = project.section("pretrain")
    params = resolve_params(raw)
    _check_choices(params)
    _init_distributed()
    rank, world_size = world()
    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    torch.manual_seed(int(params.get("seed", 0)))

    store = ImageStore.open(project.prepared_dir)
    cache_dir = project.root / "artifacts" / "augment"
    if not (cache_dir / view_sources.INDEX).is_file():
        raise SslopsError(f"{cache_dir / view_sources.INDEX} is missing: run the augment stage first (dvc repro augment).")
    index = json.loads((cache_dir / view_sources.INDEX).read_text())
    rows = np.asarray(index["rows"], dtype=np.int64)
    train_cfg = _train_config(params)
    if train_cfg.batch_size % world_size:
        raise SslopsError(f"pretrain.batch_size {train_cfg.batch_size} must divide evenly across {world_size} processes.")
    local_batch = train_cfg.batch_size // world_size
    steps_per_epoch = (len(rows) // world_size) // local_batch
    if steps_per_epoch == 0:
        raise SslopsError(f"pretrain.batch_size {train_cfg.batch_size} is larger than the {len(rows)} pretraining images.")
    device = pick_device(params.get("device", "auto"))
    amp = amp_name(train_cfg.amp, device)  # what `auto` became on this machine
    seed = train_cfg.seed

    if index["views"]:
        cache = view_sources.ViewCache.open(cache_dir)
        batches = lambda epoch: view_sources.cached_pairs(cache, local_batch, epoch, seed, rank, world_size)  # noqa: E731
    else:
        from sslops.ml.augment import BatchAugment

        augment = BatchAugment(augment_config(project.section("augment")))
        pool = np.asarray(store.images[rows])
        batches = lambda epoch: view_sources.on_the_fly_pairs(pool, augment, local_batch, epoch, seed, rank, world_size, device)  # noqa: E731

    mean, std = _channel_stats(store, rows)
    backbone_cfg = BackboneConfig(**{"in_channels": int(store.images.shape[-1]), **(params.get("backbone") or {})})
    method_name = params.get("method", "simclr")
    size = project.section("augment").get("size")
    height, width, channels = store.images.shape[1:]
    image_shape = (channels, int(size or height), int(size or width))  # what the views look like
    try:
        method = build_method(method_name, Encoder(backbone_cfg, mean, std), params.get(method_name) or {}, image_shape)
    except (TypeError, ValueError) as exc:  # an unknown or invalid knob under pretrain.<method>
        raise SslopsError(f"pretrain.{method_name} in params.yaml: {exc}") from None
    data_digest = manifest_digest(store.manifest)
    fingerprint = params_hash({"params": params, "augment": project.params.get("augment"), "world": world_size,
                               "data": data_digest, "amp": amp})  # `auto` differs per CPU: no resuming across machines
    checkpoint = project.root / "artifacts" / "checkpoints" / "pretrain.pt"
    knn, probe = params.get("knn") or {}, params.get("probe") or {}
    # Intermediate epochs use a subsampled bank (a cheap trend); the last epoch uses the whole train set.
    monitor_sets = _knn_sets(store, knn.get("monitor_bank_size"), seed)
    final_sets = _knn_sets(store, None, seed)

    def on_epoch(stats) -> dict[str, float]:  # rank 0 only
        last = stats.epoch == train_cfg.epochs - 1
        bank_rows, bank_labels, query_rows, query_labels = final_sets if last else monitor_sets
        bank = features(method.encoder, store.images[bank_rows], device)
        queries = features(method.encoder, store.images[query_rows], device)
        acc = knn_accuracy(bank, bank_labels, queries, query_labels, int(knn.get("k", 200)), float(knn.get("temperature", 0.1)))
        extra = {"knn_acc": acc}
        if last:  # the promotion metric of the register stage: a linear probe on the whole labelled train set
            extra["linear_acc"] = probe_accuracy(bank, bank_labels, queries, query_labels, float(probe.get("weight_decay", 1e-3)),
                                                 int(probe.get("iterations", 100)), seed)
        metrics = {"loss": stats.loss, "lr": stats.lr, "images_per_s": stats.images_per_s, **extra}
        print(f"epoch {stats.epoch + 1}: loss {stats.loss:.4f}  " + "  ".join(f"{k} {v:.4f}" for k, v in extra.items())
              + f"  {stats.images_per_s:.0f} img/s")
        tracking.log_metrics(metrics, step=stats.epoch + 1)
        return extra

    run_ctx = tracking.stage_run(project, "pretrain", raw, system_metrics=True) if rank == 0 else contextlib.nullcontext()
    with run_ctx:
        started = time.perf_counter()
        if rank == 0:
            tracking.set_tags({"pretrain.device": str(device), "pretrain.amp": amp, "pretrain.world_size": world_size,
                               "augment.cache_views": index["views"], "data.manifest_digest": data_digest})
        history = pretrain(method, batches, steps_per_epoch, train_cfg, device, checkpoint, fingerprint, on_epoch)
        if rank != 0:
            return {}
        summary = {
            "epochs": len(history),
            "steps": history[-1].step,
            "loss": round(history[-1].loss, 5),
            "knn_acc": round(history[-1].extra["knn_acc"], 5),
            "linear_acc": round(history[-1].extra["linear_acc"], 5),
            "images_per_s": round(float(np.mean([h.images_per_s for h in history])), 1),
            "train_seconds": round(sum(h.seconds for h in history), 1),
            "seconds": round(time.perf_counter() - started, 1),
            "device": str(device),
            "amp": amp,
            "world_size": world_size,
        }
        out = project.root / "artifacts" / "pretrain"
        with atomic_dir(out) as tmp:
            torch.save({k: v.cpu() for k, v in method.encoder.state_dict().items()}, tmp / "encoder.pt")
            (tmp / "encoder.json").write_text(json.dumps({
                "backbone": backbone_cfg.to_dict(), "mean": mean, "std": std, "feature_dim": method.encoder.feature_dim,
                "method": method_name, "image_shape": list(store.images.shape[1:]),
            }, indent=2))
        _write_curve(project, history)
        write_json(project.metrics_dir / "pretrain.json", summary)
        tracking.log_metrics({f"final.{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
        tracking.log_artifacts(out, "encoder")
        # How the register stage finds this run from the weights alone (DVC may restore them from its cache).
        tracking.set_tags({"encoder.sha256": file_digest(out / "encoder.pt")})
    return summary


def _write_curve(project: Project, history) -> None:
    """plots/pretrain.csv: one row per epoch, shown by `dvc plots show`."""
    from sslops.atomic import atomic_file

    lines = ["epoch,step,loss,lr,knn_acc,images_per_s"]
    lines += [f"{h.epoch + 1},{h.step},{h.loss:.6f},{h.lr:.6g},{h.extra.get('knn_acc', float('nan')):.5f},{h.images_per_s:.1f}" for h in history]
    with atomic_file(project.root / "plots" / "pretrain.csv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")

