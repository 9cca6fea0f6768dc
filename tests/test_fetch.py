"""Getting the default data: sha256-verified, from the Debian package or the official download."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from sslops.commands import fetch
from sslops.errors import SslopsError


@pytest.fixture
def fake_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Small stand-ins for the four files, with their checksums swapped into the module."""
    debian = tmp_path / "debian"
    debian.mkdir()
    files = {}
    for i, name in enumerate(fetch.FILES):
        raw = f"{name} payload {i}".encode() * 10
        (debian / f"{name}.gz").write_bytes(gzip.compress(raw))
        files[name] = (hashlib.sha256(raw).hexdigest(), hashlib.md5(gzip.compress(raw, mtime=0)).hexdigest())
    monkeypatch.setattr(fetch, "FILES", files)
    monkeypatch.setattr(fetch, "DEBIAN_DIR", debian)
    monkeypatch.setattr(fetch.os, "geteuid", lambda: 1000)  # never run apt-get from a test
    return debian


def test_installs_decompressed_verified_files_from_debian(fake_sources, tmp_path: Path):
    target = tmp_path / "data" / "fashion-mnist"
    assert fetch.fetch_fashion_mnist(target) == "Debian package"
    assert sorted(p.name for p in target.iterdir()) == sorted(fetch.FILES)
    assert fetch.fetch_fashion_mnist(target) == "already in place"


def test_corrupt_source_is_rejected_and_nothing_is_left(fake_sources, tmp_path: Path, monkeypatch):
    name = next(iter(fetch.FILES))
    (fake_sources / f"{name}.gz").write_bytes(gzip.compress(b"tampered"))
    monkeypatch.setattr(fetch.urllib.request, "urlretrieve", _offline)
    target = tmp_path / "fm"
    with pytest.raises(SslopsError, match="fails its sha256 check"):
        fetch.fetch_fashion_mnist(target)
    assert not any(target.iterdir())
    (fake_sources / f"{name}.gz").write_bytes(gzip.compress(b"tampered" * 100)[:-10])  # cut off: no end
    with pytest.raises(SslopsError, match=r"\.gz: cannot be decompressed \(.+\); the file is truncated or corrupt"):
        fetch.fetch_fashion_mnist(target)
    assert not any(target.iterdir())


def test_official_download_is_checksummed(fake_sources, tmp_path: Path, monkeypatch):
    for gz in fake_sources.iterdir():
        gz.rename(tmp_path / gz.name)  # the Debian copy disappears; "upstream" serves the same bytes
    fake_sources.rmdir()

    def serve(url: str, dest: Path):
        name = url.rsplit("/", 1)[1]
        raw = gzip.decompress((tmp_path / name).read_bytes())
        Path(dest).write_bytes(gzip.compress(raw, mtime=0))

    monkeypatch.setattr(fetch.urllib.request, "urlretrieve", serve)
    assert fetch.fetch_fashion_mnist(tmp_path / "fm") == "official download"

    def serve_tampered(url: str, dest: Path):  # a mirror or a proxy that hands out other bytes
        serve(url, dest)
        Path(dest).write_bytes(Path(dest).read_bytes() + b"x")

    monkeypatch.setattr(fetch.urllib.request, "urlretrieve", serve_tampered)
    with pytest.raises(SslopsError, match=r"official download: \S+\.gz failed its checksum"):
        fetch.fetch_fashion_mnist(tmp_path / "tampered")
    assert not (tmp_path / "tampered").exists() or not any((tmp_path / "tampered").iterdir())


def _offline(url, dest):
    raise OSError("Network is unreachable")


def test_all_sources_failing_names_all_three(fake_sources, tmp_path: Path, monkeypatch):
    for gz in fake_sources.iterdir():
        gz.unlink()
    fake_sources.rmdir()
    monkeypatch.setattr(fetch.urllib.request, "urlretrieve", _offline)
    with pytest.raises(SslopsError) as err:
        fetch.fetch_fashion_mnist(tmp_path / "fm")
    message = str(err.value)
    assert "(1)" in message and "(2) Debian package dataset-fashion-mnist" in message
    assert "(3) official download" in message and "Network is unreachable" in message
