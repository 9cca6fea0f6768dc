"""Decoding a plan's parts into the image store, in this process or in a pool of processes.

Each part is decoded, hashed (sha256 of its pixels) and summarised (mean, standard deviation) where it is decoded.
For the raw store its pixels are written straight into the .npy file at the part's rows (pwrite): nothing but three
small per-image values travels between processes. For the JPEG store (`sslops.data.encoded`) each image is encoded
there (or its source file's bytes kept) and the bytes travel back, a tenth of the pixels; the statistics are those
of the stored bytes decoded again. The results come back in plan order, so the store is the same byte for byte
whatever the number of processes. A worker imports only numpy, the standard library and the readers (no
pandas, no torch): a pool of two starts in about 0.6 s (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sslops.data import encoded
from sslops.data.images import ImageRejected
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


Stats = tuple[list[str], np.ndarray, np.ndarray]  # per image of a part: sha256, mean, std


def decode_into(plan: Plan, store: Path, workers: int) -> Iterator[Stats]:
    """Decode every part of `plan` into `store` (a .npy of the plan's total shape, already created), by up to
    `workers` processes; yield each part's (sha256s, means, stds) in plan order."""
    rows = itertools.accumulate((p.count for p in plan.parts), initial=0)
    jobs = ((part, store, row) for part, row in zip(plan.parts, rows, strict=False))
    try:
        yield from in_pool(_decode_job, jobs, processes(plan, workers), len(plan.parts))
    finally:  # this process's descriptor, when it wrote the parts itself (a pool's close with its processes)
        if store in _OPENED:
            os.close(_OPENED.pop(store)[0])


def encode_parts(plan: Plan, quality: int, workers: int) -> Iterator[tuple[list[bytes], int, Stats]]:
    """Every part of `plan` as JPEG bytes at `quality` (a source file already a JPEG of the part's shape and colour
    mode: its own bytes), by up to `workers` processes; yield each part's (bytes, how many kept their source's, stats
    of the decoded bytes) in plan order."""
    jobs = ((part, quality) for part in plan.parts)
    yield from in_pool(_encode, jobs, processes(plan, workers), len(plan.parts))


def in_pool(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int, count: int) -> Iterator[Any]:
    """`fn` over the `count` `jobs`, results in order: in this process, or in `workers` fresh interpreters (spawn, not
    fork: the stage process holds an MLflow run and its threads). Also how a plan reads a large folder's headers.
    `jobs` may be a generator: a job per image, listed up front, would cost memory in proportion to the dataset."""
    if workers == 1:
        yield from map(fn, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        chunk = max(1, min(MAX_CHUNK, count // (8 * workers)))
        yield from pool.imap(fn, jobs, chunksize=chunk)


def _decode_job(job: tuple[Part, Path, int]) -> Stats:
    """A raw store's task: decode one part and write its pixels at its rows."""
    part, store, row = job
    pixels = _checked(part, part.load())
    fd, offset = _opened(store)
    os.pwrite(fd, np.ascontiguousarray(pixels).data, offset + row * pixels[0].nbytes if len(pixels) else offset)
    return _stats(pixels)


def _encode(job: tuple[Part, int]) -> tuple[list[bytes], int, Stats]:
    """A JPEG store's task: one part's bytes, and the statistics of what a reader will decode from them."""
    part, quality = job
    if part.file is not None:
        blobs = [Path(part.file).read_bytes()]
        try:
            pixels = encoded.decode(blobs[0], part.shape)[None]
        except (OSError, SslopsError) as exc:
            raise ImageRejected(part.file, f"corrupt or truncated image ({exc})", "unreadable") from None
    else:
        loaded = _checked(part, part.load())
        blobs = [encoded.encode(image, quality) for image in loaded]
        pixels = np.stack([encoded.decode(blob, part.shape) for blob in blobs])
    return blobs, int(part.file is not None), _stats(pixels)


_OPENED: dict[Path, tuple[int, int]] = {}


def _opened(path: Path) -> tuple[int, int]:
    """The store opened once per process for writing, and where its pixels start. Written with pwrite, not through
    a memory map: mapped pages written stay in the writer's resident set, so its memory would grow with the store
    (docs/benchmarks.md); written ones go to the page cache, which the kernel flushes and frees."""
    if path not in _OPENED:
        _OPENED[path] = (os.open(path, os.O_WRONLY), int(np.load(path, mmap_mode="r").offset))
    return _OPENED[path]


def _checked(part: Part, pixels: np.ndarray) -> np.ndarray:
    if pixels.shape != (part.count, *part.shape):
        raise SslopsError(
            f"{part.source}: decoded shape {pixels.shape} differs from its header {(part.count, *part.shape)}."
        )
    return pixels


def _stats(pixels: np.ndarray) -> Stats:
    """Each image's sha256, mean and standard deviation (in chunks: float64 over a large part would need 8x its size
    in memory)."""
    flat = pixels.reshape(len(pixels), -1)
    digests = [hashlib.sha256(img.tobytes()).hexdigest() for img in flat]
    mean, std = np.empty(len(flat)), np.empty(len(flat))
    for start in range(0, len(flat), 8192):
        chunk = flat[start : start + 8192].astype(np.float32)
        mean[start : start + 8192], std[start : start + 8192] = chunk.mean(1), chunk.std(1)
    return digests, mean, std
