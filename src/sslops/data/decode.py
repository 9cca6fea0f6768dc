"""Decoding a plan's parts into the image store, in this process or in a pool of processes.

Each part is decoded, hashed (sha256 of its pixels) and summarised (mean, standard deviation) where it is decoded,
and its pixels are written straight into the store's memory-mapped .npy at the part's rows: nothing but three small
per-image values travels between processes. The results come back in plan order, so the store is the same byte for
byte whatever the number of processes. A worker imports only numpy, the standard library and the readers (no
pandas, no torch): a pool of two starts in about 0.6 s (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np

from sslops.data.sources import Part, Plan
from sslops.errors import SslopsError

# Fewer images than this per process and starting one costs more than it saves: a 96 px JPEG decodes in about
# 0.18 ms here (docs/benchmarks.md).
IMAGES_PER_WORKER = 8192
MAX_CHUNK = 1024  # parts handed to a worker per task at most


def cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def processes(plan: Plan, workers: int) -> int:
    """How many processes decode `plan` when `workers` may: one per part at most, and per IMAGES_PER_WORKER images."""
    return max(1, min(workers, len(plan.parts), plan.total // IMAGES_PER_WORKER))


def decode_into(plan: Plan, store: Path, workers: int) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """Decode every part of `plan` into `store` (a .npy of the plan's total shape, already created), by up to
    `workers` processes; yield each part's (sha256s, means, stds) in plan order. Fresh interpreters (spawn), not
    forks: the stage process holds an MLflow run and its threads."""
    rows = np.cumsum([0] + [p.count for p in plan.parts[:-1]]).tolist()
    jobs = ((part, store, row) for part, row in zip(plan.parts, rows, strict=True))
    workers = processes(plan, workers)
    if workers == 1:
        images = np.load(store, mmap_mode="r+")
        yield from (_decode(part, images, row) for part, _, row in jobs)
        images.flush()
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        chunk = max(1, min(MAX_CHUNK, len(plan.parts) // (8 * workers)))
        yield from pool.imap(_decode_job, jobs, chunksize=chunk)


def _decode_job(job: tuple[Part, Path, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A worker's task: the store is mapped once per worker (the pool ends with the plan, and its maps with it)."""
    part, store, row = job
    return _decode(part, _mapped(store), row)


@cache
def _mapped(path: Path) -> np.memmap:
    return np.load(path, mmap_mode="r+")


def _decode(part: Part, images: np.ndarray, row: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Decode `part` into rows `row`.. of `images`; its images' sha256s, means and standard deviations (in chunks:
    float64 over a large part would need 8x its size in memory)."""
    pixels = part.load()
    if pixels.shape != (part.count, *images.shape[1:]):
        raise SslopsError(
            f"{part.source}: decoded shape {pixels.shape} differs from its header {(part.count, *images.shape[1:])}."
        )
    images[row : row + part.count] = pixels
    flat = pixels.reshape(len(pixels), -1)
    digests = [hashlib.sha256(img.tobytes()).hexdigest() for img in flat]
    mean, std = np.empty(len(flat)), np.empty(len(flat))
    for start in range(0, len(flat), 8192):
        chunk = flat[start : start + 8192].astype(np.float32)
        mean[start : start + 8192], std[start : start + 8192] = chunk.mean(1), chunk.std(1)
    return digests, mean, std
