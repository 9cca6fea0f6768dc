"""Get the default dataset (Fashion-MNIST) into data/ with every file verified by sha256.

Sources, in order: files already in data/; the Debian package `dataset-fashion-mnist` (installed with
apt-get when running as root on Debian); the official download. data/ keeps the *decompressed* IDX files,
because the Debian package re-compresses the upstream .gz files: the decompressed bytes are identical
across sources, so the committed data.dvc matches whichever source a machine used.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
import urllib.request
import zlib
from pathlib import Path

from sslops.adapters.provenance import file_digest
from sslops.errors import SslopsError

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Decompressed file -> (sha256 of the decompressed file, md5 of the official .gz as published upstream).
FILES = {
    "train-images-idx3-ubyte": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    "train-labels-idx1-ubyte": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "25c81989df183df01b3e8a0aad5dffbe",
    ),
    "t10k-images-idx3-ubyte": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "bef4ecab320f06d8554ea6380940ec79",
    ),
    "t10k-labels-idx1-ubyte": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
}


def _verified(folder: Path) -> bool:
    return all((folder / n).is_file() and file_digest(folder / n) == sha for n, (sha, _) in FILES.items())


def _install_from_gz(gz_files: dict[str, Path], target: Path) -> None:
    """Decompress `<name>.gz` files into `target`, verify each, and move them in atomically."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        for name, gz in gz_files.items():
            out = Path(tmp) / name
            try:
                with gzip.open(gz, "rb") as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                raise SslopsError(f"{gz}: cannot be decompressed ({exc}); the file is truncated or corrupt.") from None
            if file_digest(out) != FILES[name][0]:
                raise SslopsError(f"{gz}: decompressed content fails its sha256 check; the file is corrupt.")
        for name in gz_files:
            os.replace(Path(tmp) / name, target / name)


def _from_debian(target: Path) -> str | None:
    if not DEBIAN_DIR.is_dir() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
    if not DEBIAN_DIR.is_dir():
        return f"Debian package {DEBIAN_PACKAGE}: {DEBIAN_DIR} not present and apt-get could not install it"
    _install_from_gz({n: DEBIAN_DIR / f"{n}.gz" for n in FILES}, target)
    return None


def _from_official(target: Path) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        gz_files = {}
        for name, (_, md5) in FILES.items():
            dest = Path(tmp) / f"{name}.gz"
            try:
                urllib.request.urlretrieve(OFFICIAL_URL + dest.name, dest)  # noqa: S310 - fixed https/http host
            except OSError as exc:
                return f"official download from {OFFICIAL_URL}: {exc}"
            if file_digest(dest, "md5") != md5:
                return f"official download: {dest.name} failed its checksum"
            gz_files[name] = dest
        _install_from_gz(gz_files, target)
    return None


def fetch_fashion_mnist(target: Path) -> str:
    """Make sure `target` holds the four verified Fashion-MNIST IDX files; return where they came from."""
    if _verified(target):
        return "already in place"
    problems = []
    for label, source in (("Debian package", _from_debian), ("official download", _from_official)):
        problem = source(target)
        if problem is None and _verified(target):
            return label
        problems.append(problem or f"{label}: files failed verification")
    raise SslopsError(
        "Could not get Fashion-MNIST. Tried (1) "
        f"{target} (files missing or failing sha256), (2) {problems[0]}, (3) {problems[1]}. "
        f"Copy the four IDX files into {target}, or install the Debian package {DEBIAN_PACKAGE}."
    )
