"""Export scikit-learn's bundled handwritten digits (`load_digits`) as an MNIST-layout IDX folder, byte for byte.

Why IDX: the data folder is tracked by DVC, so the md5 committed in the repository must match what a fresh clone
exports on any machine. Raw IDX is a fixed header plus the uint8 pixels in order, so the bytes depend only on the
values; a PNG (or gzip) re-encoding would depend on the encoder's library version and settings.

Pixels: `load_digits` holds integers 0..16 (as float64). They become uint8 0..255 as round(v * 255 / 16),
computed exactly with integer arithmetic, (v * 255 + 8) // 16, so no floating-point rounding can differ between
machines (0 -> 0, 8 -> 128, 16 -> 255).

Split: stratified by class, with no random numbers at all (NumPy documents that `Generator` streams may change
between versions, and the export must not): the members of each class, in scikit-learn's order, are cut into 50
equal stretches and the one at the middle of each stretch, position (2 * i + 1) * n // 100 for i in 0..49 with
n the class size, goes to the test split. That is exactly 50 test images per class (500 in all) spread evenly
over the file's order (no contiguous block of it lands in one split), and the remaining 1,297 are the training
split. Within each split images keep their original order.
"""

from __future__ import annotations

import os
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from sslops.adapters.provenance import file_digest
from sslops.data.idx import write_idx
from sslops.errors import SslopsError

TEST_PER_CLASS = 50
N_CLASSES = 10
COUNTS = {"train": 1297, "test": 500}
# IDX file -> sha256 of its bytes, as exported from scikit-learn 1.9.1 (the bundled data has not changed in years).
FILES = {
    "train-images-idx3-ubyte": "8eff704bf8e7c45436c17c2a1f889d13461f37c4ce7be4b6ab256f825220cedb",
    "train-labels-idx1-ubyte": "fa70d7d4ab53e3ac0dd7f5236f4a7f7b5a2fbf5d2f49f210b687108176e128d7",
    "t10k-images-idx3-ubyte": "bebed3d2fa8abb57d6a11c06cb5e3f2673d9ead5a49cb64bb060566cba65e04f",
    "t10k-labels-idx1-ubyte": "3d6ddff8212e5024273a1bb94ac8970d5eba48b5df200fa4cf2dcb6ae3b06879",
}


def _sklearn_version() -> str:
    try:
        return metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _result() -> dict:
    return {**COUNTS, "classes": N_CLASSES, "source": f"scikit-learn {_sklearn_version()} load_digits"}


def _verified(folder: Path) -> bool:
    return all((folder / n).is_file() and file_digest(folder / n) == sha for n, sha in FILES.items())


def split_mask(labels: np.ndarray) -> np.ndarray:
    """True for the test split: the middle member of each of 50 equal stretches of every class (no RNG)."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in range(N_CLASSES):
        members = np.flatnonzero(labels == c)
        n = len(members)
        if n < 2 * TEST_PER_CLASS:
            raise SslopsError(f"load_digits: class {c} has only {n} images; the split needs at least 100 per class.")
        mask[members[[(2 * i + 1) * n // (2 * TEST_PER_CLASS) for i in range(TEST_PER_CLASS)]]] = True
    return mask


def _arrays() -> dict[str, np.ndarray]:
    """The four arrays to write, from the installed scikit-learn (imported here: only this command needs it)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    values = digits.images.astype(np.int64)
    labels = np.asarray(digits.target).astype(np.int64)
    if values.ndim != 3 or not np.array_equal(values, digits.images) or values.min() < 0 or values.max() > 16:
        raise SslopsError(
            f"scikit-learn {_sklearn_version()} load_digits no longer returns N x 8 x 8 integers 0..16; "
            "the export rule in sslops.commands.digits does not apply to it."
        )
    if labels.shape != values.shape[:1] or set(np.unique(labels).tolist()) != set(range(N_CLASSES)):
        raise SslopsError(f"scikit-learn {_sklearn_version()} load_digits: labels are not one of 0..9 per image.")
    pixels = ((values * 255 + 8) // 16).astype(np.uint8)
    test = split_mask(labels)
    return {
        "train-images-idx3-ubyte": pixels[~test],
        "train-labels-idx1-ubyte": labels[~test].astype(np.uint8),
        "t10k-images-idx3-ubyte": pixels[test],
        "t10k-labels-idx1-ubyte": labels[test].astype(np.uint8),
    }


def export_digits(target: Path) -> dict:
    """Make sure `target` holds the four verified digits IDX files; return the split counts and the source.

    Files already in place and matching their sha256 are left untouched (so DVC and mtimes see no change). A
    missing or altered file is exported afresh: the export is a pure function of scikit-learn's bundled data,
    so a changed file is replaced rather than trusted. The new files are written into a temporary folder next
    to `target`, each checked against `FILES`, and only then moved in, so a failed export leaves no half-written
    or unverified file in `target`.
    """
    target = Path(target)
    if _verified(target):
        return _result()
    arrays = _arrays()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        for name, array in arrays.items():
            out = Path(tmp) / name
            write_idx(out, array)
            if file_digest(out) != FILES[name]:
                raise SslopsError(
                    f"Exported {name} fails its sha256 check: scikit-learn {_sklearn_version()} load_digits "
                    "returns different data from the version the checksums in sslops.commands.digits were "
                    "recorded with (1.9.1), so the DVC-tracked folder would differ between machines. Install "
                    "a scikit-learn with the same bundled digits, or re-record FILES and commit the new data."
                )
        for name in arrays:
            os.replace(Path(tmp) / name, target / name)
    return _result()
