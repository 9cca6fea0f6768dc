"""The pretraining loop: plain, readable, resumable, and the same on CPU, one GPU or many (DDP).

Modelled on torchvision's references/classification/train.py: an explicit loop over epochs and
batches, the LR set per step (warm-up + cosine), AMP where the device supports it, a checkpoint written
atomically at the end of every epoch and picked up automatically on restart.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sslops.ml.device import amp_dtype, memory_format
from sslops.ml.methods import Method
from sslops.ml.optim import build_optimizer, scaled_lr, warmup_cosine
from sslops.outputs.atomic import atomic_file
from sslops.outputs.progress import progress_bar

Batches = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
EpochHook = Callable[["EpochStats"], dict[str, float]]  # rank 0, after each epoch: monitoring and logging


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation knobs of params.yaml `pretrain:` (values there; validated by the config layer)."""

    epochs: int
    batch_size: int  # global, across all ranks
    optimizer: str  # lars | sgd | adamw
    base_lr: float  # for a global batch of 256; scaled linearly
    weight_decay: float
    momentum: float
    warmup_epochs: float
    final_lr_fraction: float
    amp: str  # auto | bf16 | fp16 | off
    channels_last: bool | str  # True | False | "auto"
    compile: bool
    seed: int


def epochs_for(images: int, batch_size: int, steps_per_epoch: int) -> int:
    """Whole epochs that come closest to `images` images seen at `batch_size` (at least one)."""
    return max(1, round(images / batch_size / steps_per_epoch))


@dataclass
class EpochStats:
    epoch: int
    step: int
    loss: float
    lr: float
    images_per_s: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def world() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary name, flushed to disk, then an atomic rename: a kill or a full disk mid-write
    leaves the previous checkpoint (and the next save clears the temporary)."""
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, fingerprint: str, rank: int = 0) -> dict[str, Any] | None:
    """The checkpoint at `path` if it belongs to this exact configuration, else None (start fresh).

    Loaded with `weights_only=True` (tensors and plain containers only, never code). A file that cannot be read
    (truncated by a full disk, corrupt) is moved aside by rank 0 with a warning, and training starts fresh.
    """
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file (UnpicklingError, RuntimeError, EOFError)
        if rank == 0:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            os.replace(path, aside)
            warnings.warn(
                f"{path} cannot be loaded ({type(exc).__name__}: {str(exc)[:200]}); moved it to {aside.name} "
                "and starting fresh.",
                stacklevel=2,
            )
        return None
    return state if isinstance(state, dict) and state.get("fingerprint") == fingerprint else None


@dataclass
class _Step:
    """What one optimisation step needs besides the batch: built once per run by `pretrain`."""

    method: Method
    forward: nn.Module  # the method, wrapped in DDP and/or torch.compile as configured
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    memory_format: torch.memory_format
    peak_lr: float
    total_steps: int
    warmup_steps: int


def train_one_epoch(
    step: _Step,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    device: torch.device,
    first_step: int,
    bar: Any,
) -> tuple[int, int, float, torch.Tensor]:
    """One pass over `batches`: returns (next global step, images seen, last LR, summed loss on `device`)."""
    world_size = world()[1]
    started, seen, lr, loss_sum = time.perf_counter(), 0, 0.0, torch.zeros((), device=device)
    n = first_step
    for v1, v2 in batches:
        lr = warmup_cosine(n, step.total_steps, step.warmup_steps, step.peak_lr, cfg.final_lr_fraction)
        for group in step.optimizer.param_groups:
            group["lr"] = lr
        views = [v.to(device, non_blocking=True).float().contiguous(memory_format=step.memory_format) for v in (v1, v2)]
        with torch.autocast(device.type, dtype=step.dtype) if step.dtype else contextlib.nullcontext():
            loss = step.forward(views)
        step.optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        step.scaler.step(step.optimizer)
        step.scaler.update()
        step.method.after_step(n, step.total_steps)
        loss_sum += loss.detach()
        n += 1
        seen += len(v1) * world_size
        bar.update()
        if n % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.perf_counter() - started):.0f}")
    return n, seen, lr, loss_sum


def _prepare(method: Method, cfg: TrainConfig, device: torch.device, steps_per_epoch: int) -> _Step:
    """Move and wrap the method (channels_last, SyncBN + DDP, compile) and build optimiser, scaler and schedule."""
    world_size = world()[1]
    method.to(device)
    layout = memory_format(cfg.channels_last, device)
    method.to(memory_format=layout)
    model: nn.Module = method
    if world_size > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    peak_lr = scaled_lr(cfg.base_lr, cfg.batch_size)
    dtype = amp_dtype(cfg.amp, device)
    return _Step(
        method=method,
        forward=torch.compile(model) if cfg.compile else model,
        optimizer=build_optimizer(method, cfg.optimizer, peak_lr, cfg.weight_decay, cfg.momentum),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        dtype=dtype,
        memory_format=layout,
        peak_lr=peak_lr,
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=int(cfg.warmup_epochs * steps_per_epoch),
    )


def _resume(
    step: _Step, checkpoint: Path, fingerprint: str, on_epoch: EpochHook | None
) -> tuple[int, int, list[EpochStats]]:
    """(first epoch to train, global step, history so far): from `checkpoint` when it matches, else a fresh start.

    A checkpoint whose last epoch has no monitor results (the hook failed, e.g. MLflow went down after training)
    gets them now, so a rerun records instead of training again.
    """
    rank = world()[0]
    state = load_checkpoint(checkpoint, fingerprint, rank)
    if state is None:
        return 0, 0, []
    step.method.load_state_dict(state["model"])
    step.optimizer.load_state_dict(state["optimizer"])
    step.scaler.load_state_dict(state["scaler"])
    history = [EpochStats(**h) for h in state["history"]]
    if rank == 0:
        print(f"resuming from {checkpoint} after epoch {state['epoch'] + 1} (step {state['step']})")
        if on_epoch is not None and history and not history[-1].extra:
            history[-1].extra = on_epoch(history[-1])
            save_checkpoint(checkpoint, {**state, "history": [h.__dict__ for h in history]})
    return state["epoch"] + 1, state["step"], history


def pretrain(
    method: Method,
    batches: Batches,
    steps_per_epoch: int,
    cfg: TrainConfig,
    device: torch.device,
    checkpoint: Path,
    fingerprint: str,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
) -> list[EpochStats]:
    """Train `method` for cfg.epochs, resuming from `checkpoint` when it matches `fingerprint`.

    `batches(epoch)` yields (view1, view2) uint8 tensors of this rank's share of the global batch.
    `on_epoch` runs on rank 0 after each epoch (monitoring, logging) and may add metrics to the stats.
    """
    rank, world_size = world()
    step = _prepare(method, cfg, device, steps_per_epoch)
    start_epoch, n, history = _resume(step, checkpoint, fingerprint, on_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        step.forward.train()
        started = time.perf_counter()
        with progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", "batch", progress and rank == 0) as bar:
            n, seen, lr, loss_sum = train_one_epoch(step, batches(epoch), cfg, device, n, bar)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels are queued asynchronously: time the work, not the launches
        seconds = time.perf_counter() - started
        if world_size > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= world_size
        stats = EpochStats(epoch, n, float(loss_sum) / max(1, steps_per_epoch), lr, seen / seconds, seconds)
        if rank == 0:
            try:
                if on_epoch is not None:
                    stats.extra = on_epoch(stats)
            finally:  # the trained epoch is kept even when the hook fails (e.g. the tracking server goes down)
                history.append(stats)
                state = {"fingerprint": fingerprint, "epoch": epoch, "step": n, "model": method.state_dict()}
                state |= {"optimizer": step.optimizer.state_dict(), "scaler": step.scaler.state_dict()}
                save_checkpoint(checkpoint, {**state, "history": [h.__dict__ for h in history]})
        if world_size > 1:
            dist.barrier()
    return history


def step_seconds(method: Method, cfg: TrainConfig, device: torch.device, steps: int = 5) -> float:
    """Seconds per optimisation step of `method` under `cfg` (its global batch in one process, its precision and
    layout) on random views: the median of `steps` steps timed one by one, after two untimed ones that pay for
    first-call allocations (the median, as the first steps on a CPU that was idle run up to a fifth slower). The
    pretraining part of `sslops estimate`'s calibration. The method's weights move: pass one built for it."""
    c, h, w = method.image_shape
    gen = torch.Generator().manual_seed(0)
    pair = tuple(torch.randint(0, 256, (cfg.batch_size, c, h, w), dtype=torch.uint8, generator=gen) for _ in range(2))
    step = _prepare(method, cfg, device, steps_per_epoch=steps + 2)
    timed = []
    with progress_bar(steps, "calibration", "step", enabled=False) as bar:
        for count in [2] + [1] * steps:
            started = time.perf_counter()
            train_one_epoch(step, iter([pair] * count), cfg, device, 0, bar)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timed.append(time.perf_counter() - started)
    return statistics.median(timed[1:])
