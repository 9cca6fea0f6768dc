"""CIFAR-10 "python version" batches: pickled dicts of uint8 rows (3072 = 3 x 32 x 32) and labels.

The batches are pickles, and unpickling runs whatever callable a file names: a crafted `data_batch_1` would run
its code during `sslops prepare`. They are read with a restricted unpickler that resolves only the few globals
the real files use (numpy's array reconstruction), and refuses any other with a named error.
"""

from __future__ import annotations

import codecs
import functools
import pickle
from pathlib import Path
from typing import BinaryIO

import numpy as np

from sslops.data.sources import Part, Plan
from sslops.errors import SslopsError

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)


# The globals a CIFAR-10 batch may name: numpy array reconstruction (the original files, written by numpy 1.x under
# Python 2, and the same data re-pickled by numpy 2 under Python 3) and the codec Python 3 uses for bytes in
# protocol 2. Everything else (os.system, builtins.eval, subprocess, ...) is refused.
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class UnsafePickleError(SslopsError):
    """A pickle named a global outside SAFE_GLOBALS: it would have run code when loaded."""


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only SAFE_GLOBALS: loading data, never running what a file names."""

    def __init__(self, fh: BinaryIO, path: Path) -> None:
        super().__init__(fh, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.path}: refused to load: the file names `{module}.{name}`, which a CIFAR-10 batch never does "
                "(unpickling it would run code). Use the original cifar-10-python files."
            ) from None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh, path).load()
    except SslopsError:
        raise
    except Exception as exc:  # a crafted or damaged pickle fails in many ways, none of which may escape unnamed
        raise SslopsError(f"{path}: cannot be read as a CIFAR-10 python batch ({exc}).") from None
    if not isinstance(batch, dict):
        raise SslopsError(f"{path}: not a CIFAR-10 python batch (expected a pickled dict).")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _load_pixels(path: Path) -> np.ndarray:
    rows = np.asarray(_unpickle(path)["data"], dtype=np.uint8)
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def plan_cifar10(root: Path, classes: list[str]) -> Plan:
    """Plan the five train batches and the test batch found in `root` (cifar-10-batches-py)."""
    parts = []
    for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        for name in names:
            path = root / name
            if not path.is_file():
                raise SslopsError(f"{path}: missing CIFAR-10 batch (expected {', '.join(names)} in {root}).")
            batch = _unpickle(path)
            if "data" not in batch or "labels" not in batch:
                raise SslopsError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'.")
            data = batch["data"]
            try:
                labels = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
            except (TypeError, ValueError, OverflowError):
                raise SslopsError(f"{path}: CIFAR-10 labels must be a list of integers.") from None
            if getattr(data, "shape", (0, 0))[1:] != (3072,) or len(labels) != len(data):
                raise SslopsError(
                    f"{path}: expected N x 3072 pixel rows and N labels, got {getattr(data, 'shape', '?')}."
                )
            parts.append(Part(split, name, len(labels), (32, 32, 3), labels, functools.partial(_load_pixels, path)))
    meta = root / "batches.meta"
    names_found = (
        [n.decode() if isinstance(n, bytes) else n for n in _unpickle(meta).get("label_names", [])]
        if meta.is_file()
        else []
    )
    return Plan(parts=parts, classes=list(classes) or names_found or [str(i) for i in range(10)])
