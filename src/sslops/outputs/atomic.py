"""Write outputs under a temporary name and rename them into place only when complete.

A crash, a Ctrl-C, a full disk or a bad input half-way through a stage must never leave a half-written output
that a later stage (or DVC) would mistake for a finished one. Temporaries are flushed to disk (file and folder
fsync) before the rename, so a power cut cannot leave a renamed but empty file; temporaries that a crashed run
left behind (a SIGBUS on a full disk kills without cleanup) are removed when the next write of the same output
starts. Large memory-mapped outputs check the free space first and reserve it (`reserve`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sslops.errors import SslopsError

# Space left free besides what a write needs: the filesystem's own metadata, logs, the manifest, DVC's lock.
HEADROOM_BYTES = 64 << 20


def _clear_stale(target: Path) -> None:
    """Remove `.<name>.tmp-*` / `.<name>.old-*` siblings of `target` left by a crashed earlier run.

    Stages run one at a time per project (DVC's lock, the project lock), so no live writer owns them.
    """
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries and every file below it, to disk."""
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file() and not child.is_symlink():
                _fsync(child)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fresh_temporary(target: Path) -> Path:
    """A new `.<name>.tmp-*` folder beside `target`, once those a crashed run left are gone."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


@contextlib.contextmanager
def scratch_dir(target: Path) -> Iterator[Path]:
    """A temporary folder named after `target`, beside it, for work that must not outlive the stage (validate's
    database: hundreds of MB for a million images); removed on exit, and at the next start when a killed run left it."""
    tmp = _fresh_temporary(Path(target))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `target`; replace `target` with it on success."""
    target = Path(target)
    tmp = _fresh_temporary(target)
    try:
        yield tmp
        _fsync(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    _fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; `os.replace` it onto `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    _fsync(target.parent)


def write_json(path: Path, payload: Any) -> None:
    """Atomically write `payload` as pretty, key-sorted JSON (stable diffs for `dvc metrics diff`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def ensure_space(folder: Path, needed: int, what: str) -> None:
    """Refuse, before a byte is written, a write of `needed` bytes that the disk under `folder` cannot hold."""
    free = shutil.disk_usage(folder).free
    if needed + HEADROOM_BYTES > free:
        raise SslopsError(
            f"not enough disk space for {what}: it needs {needed:,} bytes (+{HEADROOM_BYTES >> 20} MiB headroom) "
            f"but {folder} has {free:,} bytes free. Free space, or point the project at a larger disk."
        )


def reserve(path: Path, nbytes: int) -> None:
    """Allocate the blocks of an already created file (e.g. a memory-mapped .npy) now, where the filesystem can.

    A memory-mapped write into a sparse file on a full disk dies with SIGBUS, without an error or cleanup;
    with the blocks allocated up front, a full disk is an `ENOSPC` here, reported as a named error.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # the filesystem cannot preallocate; ensure_space checked
            return
        raise SslopsError(f"cannot reserve {nbytes:,} bytes for {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
