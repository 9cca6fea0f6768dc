"""The pretraining loop: plain, readable, resumable, and the same on CPU, one GPU or many (DDP).

Modelled on torchvision's references/classification/train.py: an explicit loop over epochs and
batches, the LR set per step (warm-up + cosine), AMP where the device supports it, a checkpoint written
atomically at the end of every epoch and picked up automatically on restart.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sslops.ml.methods import Method
from sslops.ml.optim import build_optimizer, scaled_lr, warmup_cosine

Batches = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256  # global, across all ranks
    optimizer: str = "lars"
    base_lr: float = 0.3  # for a global batch of 256; scaled linearly
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    final_lr_fraction: float = 0.0
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: bool | str = "auto"
    compile: bool = False
    seed: int = 0


@dataclass
class EpochStats:
    epoch: int
    step: int
    loss: float
    lr: float
    images_per_s: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless named explicitly."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles).

    There bf16 autocast makes the small_cnn pretraining loop 1.3-1.5x faster than fp32 (docs/benchmarks.md);
    elsewhere bf16 is emulated and slower, so 'auto' keeps fp32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


AMP_SETTINGS = ("auto", "bf16", "fp16", "off")


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `setting` (auto | bf16 | fp16 | off) on `device`, None for full fp32.

    'auto': bf16 on CUDA where supported (else fp16 with a scaler), bf16 on a CPU with native bf16, fp32 otherwise.
    """
    if setting == "off":
        return None
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    raise ValueError(f"unknown amp setting '{setting}' ({' | '.join(AMP_SETTINGS)})")


def amp_name(setting: str, device: torch.device) -> str:
    """What `setting` resolves to on `device` as a setting name (bf16, fp16 or off): recorded with each run."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype(setting, device), "off")


def world() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary name, then an atomic rename: a kill mid-write leaves the old checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it belongs to this exact configuration, else None (start fresh)."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state if state.get("fingerprint") == fingerprint else None


def pretrain(
    method: Method,
    batches: Batches,
    steps_per_epoch: int,
    cfg: TrainConfig,
    device: torch.device,
    checkpoint: Path,
    fingerprint: str,
    on_epoch: Callable[[EpochStats], dict[str, float]] | None = None,
    progress: bool = True,
) -> list[EpochStats]:
    """Train `method` for cfg.epochs, resuming from `checkpoint` when it matches `fingerprint`.

    `batches(epoch)` yields (view1, view2) uint8 tensors of this rank's share of the global batch.
    `on_epoch` runs on rank 0 after each epoch (monitoring, logging) and may add metrics to the stats.
    """
    from tqdm.auto import tqdm

    rank, world_size = world()
    method.to(device)
    channels_last = cfg.channels_last is True or (cfg.channels_last == "auto" and device.type in ("cuda", "cpu"))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    method.to(memory_format=memory_format)
    model: nn.Module = method
    if world_size > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if cfg.compile else model

    peak_lr = scaled_lr(cfg.base_lr, cfg.batch_size)
    optimizer = build_optimizer(method, cfg.optimizer, peak_lr, cfg.weight_decay, cfg.momentum)
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)

    history: list[EpochStats] = []
    start_epoch, step = 0, 0
    state = load_checkpoint(checkpoint, fingerprint)
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        history = [EpochStats(**h) for h in state["history"]]
        if rank == 0:
            print(f"resuming from {checkpoint} after epoch {state['epoch'] + 1} (step {step})")

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        started, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
        bar = tqdm(batches(epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress or rank != 0, mininterval=2.0)
        for v1, v2 in bar:
            lr = warmup_cosine(step, total_steps, warmup_steps, peak_lr, cfg.final_lr_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            views = [v.to(device, non_blocking=True).float().contiguous(memory_format=memory_format) for v in (v1, v2)]
            autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with autocast:
                loss = forward(views)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            method.after_step(step, total_steps)
            loss_sum += loss.detach()
            step += 1
            seen += len(v1) * world_size
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.perf_counter() - started):.0f}")
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels are queued asynchronously: time the work, not the launches
        seconds = time.perf_counter() - started
        if world_size > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= world_size
        stats = EpochStats(epoch, step, float(loss_sum) / max(1, steps_per_epoch), lr, seen / seconds, seconds)
        if rank == 0:
            if on_epoch is not None:
                stats.extra = on_epoch(stats)
            history.append(stats)
            save_checkpoint(checkpoint, {
                "fingerprint": fingerprint, "epoch": epoch, "step": step, "model": method.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "history": [h.__dict__ for h in history],
            })
        if world_size > 1:
            dist.barrier()
    return history
