"""Faults and hostile input (docs/reliability.md): nothing runs code it did not ship, nothing stale is published,
a bad file gets a named error instead of a traceback or a full memory."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, TASK, TINY_EPOCH, run_task, set_param, write_cifar
from sslops.data.cifar import UnsafePickleError, plan_cifar10
from sslops.data.idx import read_idx, write_idx
from sslops.errors import SslopsError
from sslops.ml.train import load_checkpoint, save_checkpoint


class _RunsCode:
    """A pickle payload that runs a shell command when loaded, as a crafted CIFAR batch would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_cifar_batch_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar")
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar" / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, fh)
    with pytest.raises(UnsafePickleError, match=r"data_batch_1: refused to load: the file names `(posix|os)\.system`"):
        plan_cifar10(tmp_path / "cifar", [])
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_cifar_batches_still_load_under_the_restricted_unpickler(tmp_path: Path, protocol: int) -> None:
    write_cifar(tmp_path / "cifar")
    rows = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    with open(tmp_path / "cifar" / "test_batch", "wb") as fh:
        pickle.dump({b"batch_label": b"testing", b"data": rows, b"labels": [3, 4]}, fh, protocol=protocol)
    plan = plan_cifar10(tmp_path / "cifar", [])
    test = next(p for p in plan.parts if p.split == "test")
    assert test.labels.tolist() == [3, 4] and np.array_equal(test.load()[1, 0, 0], rows[1, [0, 1024, 2048]])


def test_an_idx_gzip_bomb_is_refused_before_it_is_decompressed(tmp_path: Path) -> None:
    """A header that promises more than the compressed file can hold is refused without decompressing anything."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in (1_000_000, 1000, 1000))
    with gzip.open(path, "wb") as fh:  # 1 TB promised; a few KB of zeros actually there
        fh.write(header + bytes(1 << 20))
    with pytest.raises(SslopsError, match=r"header declares shape \(1000000, 1000, 1000\).*more than a file of"):
        read_idx(path)


def test_an_idx_file_is_read_only_as_far_as_its_header_promises(tmp_path: Path, monkeypatch) -> None:
    from sslops.data import idx

    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, np.arange(10, dtype=np.uint8))
    assert read_idx(path).tolist() == list(range(10))
    with gzip.open(path, "wb") as fh:  # ten labels promised, 100 MB of trailing zeros behind them
        fh.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(10) + bytes(100 << 20))
    decompressed = []
    real_open = idx._open

    class Counting:
        def __init__(self, fh) -> None:
            self.fh = fh

        def read(self, n: int = -1) -> bytes:
            data = self.fh.read(n)
            decompressed.append(len(data))
            return data

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

    monkeypatch.setattr(idx, "_open", lambda p: Counting(real_open(p)))
    with pytest.raises(SslopsError, match="header declares shape \\(10,\\) .* but more \\(trailing data\\) follow"):
        read_idx(path)
    assert sum(decompressed) <= 2 * 8 + 10 + 1  # two headers, the promised bytes and one to see the trailing data


def test_a_corrupt_checkpoint_is_moved_aside_and_training_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "pretrain.pt"
    save_checkpoint(path, {"fingerprint": "f", "epoch": 0, "model": {"w": torch.ones(3)}})
    path.write_bytes(path.read_bytes()[:40])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match="cannot be loaded .* moved it to pretrain.pt.corrupt-"):
        assert load_checkpoint(path, "f") is None
    assert not path.exists() and len(list(tmp_path.glob("pretrain.pt.corrupt-*"))) == 1


def test_a_checkpoint_that_would_run_code_is_not_loaded(tmp_path: Path) -> None:
    path, marker = tmp_path / "pretrain.pt", tmp_path / "pwned"
    torch.save({"fingerprint": "f", "model": _RunsCode(marker)}, path)
    with pytest.warns(UserWarning, match="cannot be loaded"):
        assert load_checkpoint(path, "f") is None  # weights_only: the payload is refused, not run
    assert not marker.exists()


def test_the_code_digest_changes_with_any_source_edit(tmp_path: Path) -> None:
    from sslops.adapters.provenance import PACKAGE_DIR, code_digest

    copy = tmp_path / "sslops"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_digest(copy)
    assert before == code_digest(PACKAGE_DIR)
    with open(copy / "ml" / "losses.py", "a") as fh:
        fh.write("\n# a one-line edit\n")
    assert code_digest(copy) != before


@pytest.mark.integration
def test_a_finished_checkpoint_of_other_code_is_not_resumed(project, capsys, monkeypatch) -> None:
    """The audit's case: after an edit to the training code, `dvc repro pretrain` "resumed" the finished run of the
    old code and published its encoder. The checkpoint now carries the code's digest and is not resumed."""
    from sslops.cli import main
    from sslops.stages import pretrain

    set_param(project.root, "pretrain", "images", 2 * TINY_EPOCH)
    assert main(["prepare"]) == 0 and main(["validate"]) == 0 and main(["augment"]) == 0
    assert main(["pretrain"]) == 0 and main(["pretrain"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "after epoch 2" in out  # same code: the finished run is picked up
    monkeypatch.setattr(pretrain, "code_digest", lambda: "the code after an edit")
    assert main(["pretrain"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" not in out and "epoch 1/2:" in out and "epoch 2/2:" in out  # trained again, from scratch


def test_a_store_that_does_not_fit_the_disk_is_refused_before_a_byte_is_written(tmp_path: Path, monkeypatch) -> None:
    from collections import namedtuple

    from sslops.data.formats import plan_dataset
    from sslops.data.store import write_store
    from sslops.outputs import atomic
    from sslops.outputs.atomic import atomic_dir

    (tmp_path / "raw").mkdir()
    write_idx(tmp_path / "raw" / "train-images-idx3-ubyte", np.zeros((80, 12, 12), np.uint8))
    write_idx(tmp_path / "raw" / "train-labels-idx1-ubyte", np.zeros(80, np.uint8))
    write_idx(tmp_path / "raw" / "t10k-images-idx3-ubyte", np.zeros((20, 12, 12), np.uint8))
    write_idx(tmp_path / "raw" / "t10k-labels-idx1-ubyte", np.zeros(20, np.uint8))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _: usage(1 << 30, 1 << 30, 1000))
    target = tmp_path / "prepared"
    with pytest.raises(SslopsError, match=r"needs 14,400 bytes .* has 1,000 bytes free"), atomic_dir(target) as tmp:
        write_store(plan_dataset("idx", tmp_path / "raw", [], None, None, 1000), tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no store, no temporary folder


def test_temporaries_of_a_crashed_run_are_cleared_when_the_output_is_written_again(tmp_path: Path) -> None:
    from sslops.outputs.atomic import atomic_dir, write_json

    for stale in (".prepared.tmp-k1l2m3", ".prepared.old-4242"):
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "images.npy").write_bytes(b"half")
    (tmp_path / ".prepare.json.tmp-abc").write_text("{")
    with atomic_dir(tmp_path / "prepared") as tmp:
        (tmp / "done").write_text("ok")
    write_json(tmp_path / "prepare.json", {"ok": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepare.json", "prepared"]


def test_an_unreachable_tracking_server_fails_fast_with_one_line(project, monkeypatch, capsys) -> None:
    import socket
    import time

    from sslops.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    assert main(["prepare"]) == 3  # unavailable, not a user error: a flow retries it
    err = capsys.readouterr().err
    assert err.startswith("sslops prepare: unavailable: ") and "Traceback" not in err
    assert f"the MLflow tracking server http://127.0.0.1:{port} does not answer" in err
    assert time.monotonic() - started < 60  # MLflow's own retries would take minutes
    assert not (project.root / "artifacts").exists()


@pytest.mark.integration
def test_register_is_idempotent_and_finetune_uses_the_version_register_wrote(project, monkeypatch) -> None:
    """A kill between creating the version and setting the aliases left an orphan version, and a rerun registered
    another; finetune looked the `candidate` alias up again. Now a rerun reuses the version with the same weights,
    and finetune uses the number from metrics/register.json even when the alias has moved or gone."""
    import json

    from sslops.adapters import tracking
    from sslops.cli import main

    for stage in ("prepare", "validate", "augment", "pretrain"):
        assert main([stage]) == 0
    calls = []

    def killed(name: str, alias: str, version: str) -> None:
        calls.append(alias)
        raise KeyboardInterrupt  # as a kill right after the version was created

    real_set_alias = tracking.set_alias
    monkeypatch.setattr(tracking, "set_alias", killed)
    assert main(["register"]) == 130
    monkeypatch.setattr(tracking, "set_alias", real_set_alias)
    assert main(["register"]) == 0 and main(["register"]) == 0
    assert [str(v.version) for v in tracking.search_versions("name = 'sslops-encoder-fashion-mnist'")] == ["1"]
    record = json.loads((project.metrics_dir / "register.json").read_text())
    assert record["version"] == 1 and record["champion_version"] == 1 and len(record["encoder_sha256"]) == 64
    tracking.client().delete_registered_model_alias("sslops-encoder-fashion-mnist", "candidate")
    run_task(stages=("prepare", "validate", "finetune"))
    index = json.loads((project.outputs(TASK).finetune / "index.json").read_text())
    assert index["model"]["version"] == 1 and index["model"]["encoder_sha256"] == record["encoder_sha256"]
    # A version registered before the pickle-free format (no model.format tag) is not reused: the same weights are
    # registered again as a pt2 version, which users can load without pickle.
    tracking.client().delete_model_version_tag("sslops-encoder-fashion-mnist", "1", "model.format")
    assert main(["register"]) == 0
    found = tracking.search_versions("name = 'sslops-encoder-fashion-mnist'")
    versions = {str(v.version): v.tags.get("model.format") for v in found}
    assert versions == {"1": None, "2": "pt2"}


# --- untrusted images: ImageFolder (prepare) and `sslops embed` share one reader -----------------------------------


def _png_declaring(path: Path, width: int, height: int) -> None:
    """A few-byte PNG whose header claims `width` x `height` (as a decompression bomb's would)."""
    import struct
    import zlib

    from PIL import Image

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))


def _folder(root: Path, n: int = 2, mode: str = "L") -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for k in range(n):
            (root / split / "a").mkdir(parents=True, exist_ok=True)
            Image.new(mode, (4, 4), 30 * k).save(root / split / "a" / f"{k}.png")
    return root


@pytest.mark.parametrize(("width", "height"), [(6000, 6000), (20000, 20000)])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    from sslops.data.imagefolder import plan_imagefolder
    from sslops.data.images import ImageRejected

    root = _folder(tmp_path / "data")
    _png_declaring(root / "train" / "a" / "bomb.png", width, height)  # 36 MP (over max_pixels), 400 MP (over Pillow's)
    with pytest.raises(ImageRejected, match=r"bomb.png: .*refused before decoding") as info:
        plan_imagefolder(root, [], None, None, max_pixels=25_000_000)
    assert info.value.kind == "too-large"


def test_links_out_of_the_data_folder_and_fifos_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    from sslops.data.imagefolder import plan_imagefolder
    from sslops.data.images import ImageRejected

    root = _folder(tmp_path / "data")
    Image.new("L", (4, 4)).save(tmp_path / "secret.png")
    (root / "train" / "a" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ImageRejected, match="link.png: a symbolic link to .*secret.png, outside the data folder"):
        plan_imagefolder(root, [], None, None, max_pixels=1000)
    (root / "train" / "a" / "link.png").unlink()
    os.mkfifo(root / "train" / "a" / "pipe.png")
    with pytest.raises(ImageRejected, match="pipe.png: not a regular file"):
        plan_imagefolder(root, [], None, None, max_pixels=1000)


def test_a_file_name_that_is_not_utf8_gets_a_named_error(tmp_path: Path) -> None:
    from sslops.data.imagefolder import plan_imagefolder
    from sslops.data.images import ImageRejected

    root = _folder(tmp_path / "data")
    fd = os.open(os.fsencode(root / "train" / "a") + b"/caf\xe9.png", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    with pytest.raises(ImageRejected, match="the file name is not valid UTF-8"):
        plan_imagefolder(root, [], None, None, max_pixels=1000)


def test_colour_modes_are_converted_by_the_documented_rule(tmp_path: Path) -> None:
    from PIL import Image

    from sslops.data import images

    sixteen = Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16))
    sixteen.save(tmp_path / "16bit.png")
    assert images.read(tmp_path / "16bit.png", 1, 100).ravel().tolist() == [0, 1, 128, 255]  # rescaled, not clipped
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent: becomes the white background
    rgba.save(tmp_path / "alpha.png")
    assert images.read(tmp_path / "alpha.png", 3, 100).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((1, 0))
    palette.save(tmp_path / "palette.png", transparency=palette.getpixel((1, 0)))
    assert images.read(tmp_path / "palette.png", 3, 100)[0, 1].tolist() == [255, 255, 255]
    portrait = Image.new("L", (4, 2))
    exif = portrait.getexif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees
    portrait.save(tmp_path / "rotated.jpg", exif=exif)
    assert images.read(tmp_path / "rotated.jpg", 1, 100).shape == (4, 2, 1)


def test_a_folder_of_mixed_colour_modes_is_reported(tmp_path: Path) -> None:
    from PIL import Image

    from sslops.data.imagefolder import plan_imagefolder

    root = _folder(tmp_path / "data")
    Image.new("RGB", (4, 4), (200, 0, 0)).save(root / "train" / "a" / "red.png")
    plan = plan_imagefolder(root, [], None, None, max_pixels=1000)
    assert plan.parts[0].shape == (4, 4, 3)
    assert plan.notes == (
        "4 grayscale and 1 colour images: all converted to RGB (set prepare.channels: 1 for grayscale)",
    )


def test_embed_reads_with_the_same_rules_and_says_what_it_skipped(tmp_path: Path) -> None:
    from PIL import Image

    from sslops.commands.embed import load_images
    from sslops.data.resize import Fit

    wide = np.zeros((6, 12, 3), dtype=np.uint8)
    wide[:, :3] = 255  # the left quarter white: a stretch keeps it as a white column, a centre crop cuts it off
    Image.fromarray(wide).save(tmp_path / "ok.png")
    _png_declaring(tmp_path / "bomb.png", 6000, 6000)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    paths, pixels, skipped = load_images(tmp_path, Fit(4, 4, 1, "crop"), max_pixels=25_000_000)
    assert paths == ["ok.png"] and pixels.shape == (1, 4, 4, 1)
    assert {k: len(v) for k, v in skipped.items()} == {"too-large": 1, "unreadable": 1}
    # Prepare's resize rule, not a stretch: the centre crop cuts the white quarter off (a stretch keeps it as a
    # column); padding keeps the whole width, white column included, between black bands.
    assert pixels[0].max() < 128
    _, padded, _ = load_images(tmp_path, Fit(4, 4, 1, "pad"), max_pixels=25_000_000)
    assert padded[0, 1:3, 0].min() > 128 and padded[0, 0].max() == padded[0, 3].max() == 0


def _sslops_while_locked(project, holder: str, command: str, **env: str):
    """`python -m sslops <command>` in `project`, in a child process, while this process holds the project lock."""
    import subprocess
    import sys

    from sslops.pipeline_lock import project_lock

    with project_lock(project.root, 0, holder, on_wait=lambda _: None):
        return subprocess.run(
            [sys.executable, "-m", "sslops", command],
            cwd=project.root,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "SSLOPS_ROOT": str(project.root), **env},
        )


def test_make_run_takes_the_lock_that_flow_runs_take(project) -> None:
    """`make run` (`sslops repro`) and a Prefect run could interleave; now both hold the project lock."""
    set_param(project.root, "flow", "lock_timeout_s", 0)
    done = _sslops_while_locked(project, "a Prefect flow run (test)", "repro")
    assert done.returncode == 2
    assert "another pipeline run holds" in done.stderr and "a Prefect flow run (test)" in done.stderr
    run_target = (REPO / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "sslops repro" in run_target and "\tdvc repro" not in run_target  # `make run` goes through the lock


def test_encoder_files_that_are_not_the_registered_ones_are_refused(tmp_path: Path) -> None:
    """Weights or spec swapped (on a shared server, say): the sha256 recorded at registration no longer matches."""
    import hashlib
    import json

    from conftest import backbone_config
    from sslops.ml.models import Encoder, load_encoder_dir

    encoder = Encoder(backbone_config(width=4), [0.5], [0.3])
    torch.save(encoder.state_dict(), tmp_path / "encoder.pt")
    spec = {"backbone": encoder.config.to_dict(), "mean": [0.5], "std": [0.3], "image_shape": [12, 12, 1]}
    (tmp_path / "encoder.json").write_text(json.dumps(spec))
    weights_sha = hashlib.sha256((tmp_path / "encoder.pt").read_bytes()).hexdigest()
    spec_sha = hashlib.sha256((tmp_path / "encoder.json").read_bytes()).hexdigest()
    loaded, _ = load_encoder_dir(tmp_path, weights_sha, spec_sha)
    assert torch.equal(loaded.backbone.features[0][0].weight, encoder.backbone.features[0][0].weight)
    with pytest.raises(SslopsError, match="encoder.pt has sha256 .* not the registered"):
        load_encoder_dir(tmp_path, "0" * 64, spec_sha)
    (tmp_path / "encoder.json").write_text(json.dumps({**spec, "mean": [0.9]}))  # normalisation swapped
    with pytest.raises(SslopsError, match="encoder.json has sha256 .* not the registered"):
        load_encoder_dir(tmp_path, weights_sha, spec_sha)
    (tmp_path / "encoder.json").write_text("{not json")
    with pytest.raises(SslopsError, match="encoder.json and encoder.pt do not make an encoder"):
        load_encoder_dir(tmp_path, weights_sha)


@pytest.mark.integration
def test_the_registry_must_agree_with_the_project_record_and_carry_sslops_tags(project) -> None:
    import json

    from sslops.adapters import tracking
    from sslops.cli import main

    for stage in ("prepare", "validate", "augment", "pretrain", "register"):
        assert main([stage]) == 0, stage
    record = project.register_record()
    assert len(record["encoder_spec_sha256"]) == 64
    forged = {**record, "encoder_sha256": "f" * 64}  # the registry's tag and the project's record disagree
    with (
        pytest.raises(SslopsError, match="the registry and the project disagree"),
        tracking.registered_encoder("sslops-encoder-fashion-mnist", "1", forged),
    ):
        pass
    # A spec tag deleted on the server does not switch the spec check off: the project's record still names it.
    from sslops.ml.models import load_encoder_dir

    tracking.client().delete_model_version_tag("sslops-encoder-fashion-mnist", "1", "encoder.spec_sha256")
    with tracking.registered_encoder("sslops-encoder-fashion-mnist", "1", record) as (folder, _, digests):
        assert digests.spec == record["encoder_spec_sha256"]
        load_encoder_dir(folder, *digests)  # the file is the recorded one
    forged_spec = {**record, "encoder_spec_sha256": "e" * 64}
    with (
        tracking.registered_encoder("sslops-encoder-fashion-mnist", "1", forged_spec) as (folder, _, digests),
        pytest.raises(SslopsError, match="encoder.json has sha256"),
    ):
        load_encoder_dir(folder, *digests)
    tracking.client().delete_model_version_tag(
        "sslops-encoder-fashion-mnist", "1", "encoder.sha256"
    )  # not checkable any more
    with (
        pytest.raises(SslopsError, match="was not registered by sslops"),
        tracking.registered_encoder("sslops-encoder-fashion-mnist", "1", record),
    ):
        pass
    assert json.loads((project.metrics_dir / "register.json").read_text()) == record  # nothing rewritten


@pytest.mark.integration
def test_a_tracking_failure_after_pretraining_loses_nothing_and_a_rerun_only_records(project, monkeypatch, capsys):
    """MLflow fails while the last epoch is recorded: the trained epochs are in the checkpoint, and the rerun
    resumes the finished run (no epoch trained again), computes what was not recorded, and writes the encoder."""
    from sslops.adapters import tracking
    from sslops.cli import main

    set_param(project.root, "pretrain", "images", 2 * TINY_EPOCH)
    assert main(["prepare"]) == 0 and main(["validate"]) == 0 and main(["augment"]) == 0
    real = tracking.log_metrics

    def down_at_the_last_epoch(metrics: dict, step: int | None = None) -> None:
        if step == 2:
            raise ConnectionError("tracking server went away")
        real(metrics, step)

    monkeypatch.setattr(tracking, "log_metrics", down_at_the_last_epoch)
    with pytest.raises(ConnectionError):
        main(["pretrain"])
    assert not (project.root / "artifacts" / "pretrain").exists()
    monkeypatch.setattr(tracking, "log_metrics", real)
    capsys.readouterr()
    assert main(["pretrain"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "after epoch 2" in out and "epoch 1/2:" not in out  # nothing trained again
    assert "epoch 2/2: loss" in out  # the last epoch's monitor, which the failure did not record, is computed now
    assert (project.root / "artifacts" / "pretrain" / "encoder.pt").is_file()


def test_a_dangling_link_is_named_and_a_rotated_photo_is_planned_at_its_shown_size(tmp_path: Path) -> None:
    from PIL import Image

    from sslops.data import images
    from sslops.data.imagefolder import plan_imagefolder

    root = _folder(tmp_path / "data")
    (root / "train" / "a" / "gone.png").symlink_to(root / "train" / "a" / "missing.png")
    with pytest.raises(images.ImageRejected, match="gone.png: cannot be followed to a file"):
        plan_imagefolder(root, [], None, None, max_pixels=1000)
    portrait = Image.new("L", (4, 2))
    exif = portrait.getexif()
    exif[0x0112] = 8  # stored 4 wide and 2 high, shown turned: 2 wide and 4 high
    portrait.save(tmp_path / "rotated.jpg", exif=exif)
    assert (
        images.header(tmp_path / "rotated.jpg", 100)[:2]
        == (4, 2)
        == images.read(tmp_path / "rotated.jpg", 1, 100).shape[:2]
    )


# --- the augmentation cache respects the disk -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "budget", "views", "reason"),
    [
        ("fewer_views", 10_000, 8, "8 views fit the disk budget (8,000 bytes)"),
        ("fewer_views", 5_000, 5, "8 views of 10 images need 8,000 bytes, over the budget of 5,000: 5 views cached"),
        ("fewer_views", 1_500, 0, "no cache, views are made on the fly during pretraining"),
        ("on_the_fly", 5_000, 0, "no cache, views are made on the fly during pretraining"),
    ],
)
def test_a_cache_over_its_budget_is_planned_before_a_byte_is_written(policy, budget, views, reason) -> None:
    from sslops.ml.cache import plan_cache

    plan = plan_cache(images=10, bytes_per_view=100, views=8, budget_bytes=budget, policy=policy)
    assert plan.views == views and plan.cache_bytes == 10 * 100 * views and reason in plan.reason


def test_a_cache_over_its_budget_is_refused_when_told_so() -> None:
    from sslops.ml.cache import plan_cache

    with pytest.raises(SslopsError, match="need 8,000 bytes, over the budget of 5,000: refused"):
        plan_cache(images=10, bytes_per_view=100, views=8, budget_bytes=5_000, policy="refuse")


@pytest.mark.integration
def test_the_augment_stage_fits_its_cache_into_the_disk_budget(project, capsys) -> None:
    import json

    from sslops.cli import main

    assert main(["prepare"]) == 0 and main(["validate"]) == 0
    set_param(project.root, "augment", "views", 8)
    set_param(project.root, "augment", "disk_budget_gb", 80 * 144 * 3.5 / 1e9)  # room for 3 views of 80 images
    set_param(project.root, "augment", "over_budget", "refuse")
    assert main(["augment"]) == 2
    assert "over augment.disk_budget_gb of 40,320: refused" in capsys.readouterr().err
    assert not (project.root / "artifacts" / "augment").exists()  # nothing written
    set_param(project.root, "augment", "over_budget", "fewer_views")
    assert main(["augment"]) == 0
    assert "3 views cached" in capsys.readouterr().out
    index = json.loads((project.root / "artifacts" / "augment" / "index.json").read_text())
    metrics = json.loads((project.metrics_dir / "augment.json").read_text())
    assert index["views"] == metrics["views"] == 3 and metrics["cache_bytes"] == 80 * 144 * 3
    assert main(["pretrain"]) == 0  # pretraining reads the views the cache has


@pytest.mark.integration  # the second start runs prepare against a real MLflow store
def test_a_stage_started_directly_does_not_run_while_a_flow_holds_the_lock(project) -> None:
    """`python -m sslops <stage>` (or a plain `dvc repro`, which sets DVC_STAGE) takes the project lock itself; started
    by DVC it does not wait (DVC holds its own lock meanwhile, which the flow's next stage needs) but fails at once."""
    done = _sslops_while_locked(project, "a Prefect flow run (test)", "prepare", DVC_STAGE="prepare")
    assert done.returncode == 2, done.stderr
    assert "another pipeline run holds" in done.stderr and "a Prefect flow run (test)" in done.stderr
    assert not (project.root / "artifacts").exists()
    # Started by the lock's holder (which sets SSLOPS_PIPELINE_LOCK_HELD): runs under the holder's lock.
    held = {"DVC_STAGE": "prepare", "SSLOPS_PIPELINE_LOCK_HELD": str(project.root)}
    done = _sslops_while_locked(project, "sslops repro (test)", "prepare", **held)
    assert done.returncode == 0, done.stderr
