"""The pretrain stage on tiny data: outputs, MLflow logging of the resolved config, on-the-fly mode, params
validation, resume after SIGKILL, and torchrun with two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_BACKBONE, mlflow_runs, set_param
from sslops.cli import main
from sslops.config import Project
from sslops.errors import SslopsError
from sslops.ml.device import cpu_has_native_bf16
from sslops.ml.models import BackboneConfig, Encoder
from sslops.ml.train import load_checkpoint, save_checkpoint
from sslops.stages.pretrain import schedule, small_validation_warning

# Tests that run stages through the CLI (real MLflow store) are marked `integration` one by one; the rest are unit.


def tiny(project, epochs: int = 3, views: int = 4) -> None:
    set_param(project.root, "augment", "views", views)
    set_param(project.root, "pretrain", "images", epochs * 80)  # 80 synthetic train images: 5 steps of 16 per epoch
    set_param(project.root, "pretrain", "batch_size", 16)
    set_param(project.root, "pretrain", "backbone", TINY_BACKBONE)
    set_param(project.root, "pretrain", "method", "simclr")  # the tests read SimCLR's knobs back, whatever the default
    set_param(project.root, "pretrain", "simclr", {"proj_hidden": 16, "proj_dim": 8, "temperature": 0.2})


def load_encoder(folder: Path) -> Encoder:
    meta = json.loads((folder / "encoder.json").read_text())
    encoder = Encoder(BackboneConfig(**meta["backbone"]), meta["mean"], meta["std"])
    encoder.load_state_dict(torch.load(folder / "encoder.pt", weights_only=True))
    return encoder


@pytest.mark.integration
def test_pretrain_outputs_and_tracking(project, capsys):
    tiny(project, epochs=3)
    assert main(["prepare"]) == 0 and main(["validate"]) == 0 and main(["augment"]) == 0
    capsys.readouterr()
    assert main(["pretrain"]) == 0
    summary = json.loads((project.metrics_dir / "pretrain.json").read_text())
    assert summary["epochs"] == 3 and summary["steps"] == 3 * 5 and 0 <= summary["knn_acc"] <= 1
    # 8 validation images: the accuracies that decide promotion are said to be coarse, with their standard error
    assert f"the validation split holds {summary['val_images']} images" in capsys.readouterr().out
    assert "±10.6 points" in small_validation_warning(8) and "±1.3 points" in small_validation_warning(500)
    assert summary["amp"] == ("bf16" if cpu_has_native_bf16() else "off")  # what `amp: auto` became on this CPU
    encoder = load_encoder(project.root / "artifacts" / "pretrain")
    assert encoder(torch.zeros(2, 1, 12, 12)).shape == (2, encoder.feature_dim)
    curve = (project.root / "plots" / "pretrain.csv").read_text().splitlines()
    assert curve[0] == "epoch,step,loss,lr,knn_acc,images_per_s" and len(curve) == 4

    from mlflow.tracking import MlflowClient

    run = next(r for r in mlflow_runs(project.root) if r.info.run_name == "pretrain")
    client = MlflowClient(f"sqlite:///{project.root / 'mlflow' / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert {"knn_acc", "lr", "images_per_s", "final.knn_acc"} <= set(run.data.metrics)
    assert run.data.params["pretrain.method"] == "simclr" and run.data.tags["pretrain.device"] == "cpu"
    assert run.data.tags["pretrain.amp"] == summary["amp"]
    # The resolved config that ran: profile merged in, only the active method's knobs, no `profiles`.
    params = run.data.params
    assert params["pretrain.profile"] == "cpu" and params["pretrain.simclr.proj_dim"] == "8"
    assert params["pretrain.backbone.width"] == "4" and params["pretrain.backbone.stem_width"] == "None"
    assert not [k for k in params if k.startswith(("pretrain.profiles", "pretrain.moco.", "pretrain.byol."))]
    assert not [k for k in params if k.startswith(("pretrain.mim.", "pretrain.rotation."))]


@pytest.mark.integration
def test_on_the_fly_mode_without_cache(project):
    tiny(project, epochs=1, views=0)
    assert main(["prepare"]) == 0 and main(["validate"]) == 0 and main(["augment"]) == 0
    assert not list((project.root / "artifacts" / "augment").glob("shard-*.npy"))
    assert main(["pretrain"]) == 0
    assert json.loads((project.metrics_dir / "pretrain.json").read_text())["steps"] == 5


@pytest.mark.integration
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "method",
            "swav",
            "pretrain.method in params.yaml: no pretrain.swav mapping holds its knobs (methods with knobs: simclr,",
        ),
        ("optimizer", "adam", "pretrain.optimizer in params.yaml: must be 'lars', 'sgd' or 'adamw', got 'adam'"),
        (
            "learning_rate",
            0.1,
            "pretrain.learning_rate in params.yaml: unknown key (known: profile, method, backbone,",
        ),
    ],
)
def test_bad_pretrain_params_are_named(project, capsys, key, value, message):
    set_param(project.root, "pretrain", key, value)
    assert main(["pretrain"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_budget_is_in_images_so_a_small_dataset_gets_more_epochs(capsys):
    """600,000 images are 10 epochs of Fashion-MNIST (234 steps of 256) and 469 of a 1,300-image folder (5 steps):
    the same number of optimiser steps, not the same number of epochs (issue 13: 55 steps learned nothing)."""
    cfg = Project(REPO).config("pretrain")
    assert cfg.images == 600_000 and cfg.batch_size == 256  # the figures this test is about
    fashion, small = schedule(cfg, 234, print), schedule(cfg, 5, print)
    assert (fashion.epochs, fashion.warmup_epochs) == (10, pytest.approx(1.0))
    assert (small.epochs, small.warmup_epochs) == (469, pytest.approx(46.9))
    assert "warning" not in capsys.readouterr().out
    schedule(cfg.model_copy(update={"images": 20_000}), 5, print)  # 16 epochs of 5 steps: below min_steps
    assert "warning: 80 optimiser steps (16 epochs of 5) is below pretrain.min_steps (1000)" in capsys.readouterr().out


def test_the_validation_split_is_carved_from_labelled_train_seeded_and_digested(tmp_path):
    """The monitor and the promotion metric score held-out train images, never the test split."""
    from conftest import write_idx_dataset
    from sslops.data.formats import plan_dataset
    from sslops.data.store import ImageStore, write_store
    from sslops.stages.pretrain import validation_split

    write_idx_dataset(tmp_path / "raw")
    (tmp_path / "store").mkdir()
    write_store(plan_dataset("idx", tmp_path / "raw", [], None, "unlabeled", 10**6), tmp_path / "store", progress=False)
    store = ImageStore.open(tmp_path / "store")
    a, b, other = (validation_split(store, 0.25, seed) for seed in (0, 0, 1))
    train_rows = set(store.labelled("train")[0].tolist())
    assert set(a.val_rows) | set(a.bank_rows) == train_rows and not set(a.val_rows) & set(a.bank_rows)
    assert len(a.val_rows) == 20 and np.array_equal(a.val_rows, b.val_rows) and a.digest == b.digest
    assert a.digest != other.digest  # another seed is other validation data: not comparable for promotion
    with pytest.raises(SslopsError, match="leaves no labelled train images"):
        validation_split(store, 0.999, 0)


def test_checkpoint_of_another_configuration_is_ignored(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"fingerprint": "a", "epoch": 3})
    assert load_checkpoint(tmp_path / "c.pt", "a")["epoch"] == 3
    assert load_checkpoint(tmp_path / "c.pt", "b") is None
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.integration
def test_a_checkpoint_is_not_resumed_under_another_amp_resolution(project, capsys, monkeypatch):
    """`amp: auto` means bf16 on one CPU and fp32 on another: a checkpoint must not carry across."""
    from sslops.ml import device

    tiny(project, epochs=2)
    assert main(["prepare"]) == 0 and main(["validate"]) == 0 and main(["augment"]) == 0
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert main(["pretrain"]) == 0 and main(["pretrain"]) == 0
    assert "resuming from" in capsys.readouterr().out  # same machine: the finished run is picked up
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert main(["pretrain"]) == 0
    assert "resuming from" not in capsys.readouterr().out
    assert json.loads((project.metrics_dir / "pretrain.json").read_text())["amp"] == "bf16"


def _env(root: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "SSLOPS_ROOT": str(root),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("mlflow", "checkpoints", "pretrain", "metrics", "plots"))
    return dst


@pytest.mark.integration
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(project, tmp_path):
    epochs = 40
    tiny(project, epochs=epochs)
    assert main(["prepare"]) == 0 and main(["validate"]) == 0 and main(["augment"]) == 0
    reference = _copy_project(project.root, tmp_path / "reference")

    checkpoint = project.root / "artifacts" / "checkpoints" / "pretrain.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sslops", "pretrain"],
        env=_env(project.root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=False)["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; raise `epochs`"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 2 <= killed_at < epochs - 1
    assert not (project.root / "artifacts" / "pretrain").exists()  # no output from the killed run

    resumed = subprocess.run(
        [sys.executable, "-m", "sslops", "pretrain"], env=_env(project.root), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {checkpoint} after epoch {killed_at + 1}" in resumed.stdout

    fresh = subprocess.run(
        [sys.executable, "-m", "sslops", "pretrain"], env=_env(reference), capture_output=True, text=True
    )
    assert fresh.returncode == 0, fresh.stderr
    assert "resuming" not in fresh.stdout

    a = json.loads((project.metrics_dir / "pretrain.json").read_text())
    b = json.loads((reference / "metrics" / "pretrain.json").read_text())
    assert a["steps"] == b["steps"] == epochs * 5 and a["loss"] == b["loss"]
    wa = torch.load(project.root / "artifacts" / "pretrain" / "encoder.pt", weights_only=True)
    wb = torch.load(reference / "artifacts" / "pretrain" / "encoder.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


TORCHRUN = Path(sys.executable).parent / "torchrun"


def _torchrun_two_processes(project: Project) -> dict:
    """prepare, validate and augment in process, then `torchrun --standalone --nproc_per_node=2 -m sslops pretrain`;
    its metrics, checked: two ranks, the global batch's steps, one MLflow run (only rank 0 logs)."""
    tiny(project, epochs=2)
    assert main(["prepare"]) == 0 and main(["validate"]) == 0 and main(["augment"]) == 0
    out = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "sslops", "pretrain"],
        env=_env(project.root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((project.metrics_dir / "pretrain.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2 * 5  # 80 images / global batch 16
    runs = [r for r in mlflow_runs(project.root) if r.info.run_name == "pretrain"]
    assert len(runs) == 1 and runs[0].data.tags["pretrain.world_size"] == "2"  # only rank 0 logs
    assert np.isfinite(summary["loss"])
    return summary


@pytest.mark.integration
def test_torchrun_two_cpu_processes_train_one_model_and_log_once(project):
    _torchrun_two_processes(project)


@pytest.mark.integration
@pytest.mark.stack
def test_two_nodes_train_the_same_model_as_one_node_of_two_processes(project):
    """Several nodes, the team setup of docs/deployment.md (so `make test-stack`, beside the servers): the run of
    two processes on one node again as two nodes of one process each, meeting through a c10d rendezvous (as on two
    machines; here both on loopback). The same loss and weights (BatchNorm statistics are per rank in both), and its
    checkpoint resumes."""
    summary = _torchrun_two_processes(project)
    single = load_encoder(project.root / "artifacts" / "pretrain").state_dict()
    shutil.rmtree(project.root / "artifacts" / "checkpoints")  # else the finished 2-process run is resumed
    port = _free_port()
    nodes = [
        str(TORCHRUN),
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=sslops-test",
        "-m",
        "sslops",
        "pretrain",
    ]
    # torchrun gives each process one thread when it starts several per node; a node of one process keeps all the
    # cores. One thread each here, as in the single-node run: another thread count sums in another order.
    env = {**_env(project.root), "OMP_NUM_THREADS": "1"}
    for attempt in ("fresh", "resume"):
        procs = [
            subprocess.Popen(nodes, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)
        ]
        logs = [proc.communicate(timeout=600)[0] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
        two_nodes = json.loads((project.metrics_dir / "pretrain.json").read_text())
        assert (two_nodes["world_size"], two_nodes["steps"]) == (2, summary["steps"])
        assert two_nodes["loss"] == pytest.approx(summary["loss"], abs=1e-5)
        weights = load_encoder(project.root / "artifacts" / "pretrain").state_dict()
        assert all(torch.allclose(weights[k].float(), single[k].float(), atol=1e-5) for k in single)
        assert ("resuming from" in "".join(logs)) == (attempt == "resume")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_numbers_written_without_a_dot_are_still_numbers(project):
    set_param(project.root, "pretrain", "weight_decay", "5e-4")
    assert "weight_decay: 5e-4\n" in project.params_file.read_text()  # YAML 1.1 reads it as the string '5e-4'
    assert project.section("pretrain")["weight_decay"] == "5e-4"
    assert schedule(project.config("pretrain"), 5, print).weight_decay == 5e-4  # what pretrain trains with
    set_param(project.root, "pretrain", "base_lr", "fast")
    message = "pretrain.base_lr in params.yaml: must be a valid number, unable to parse string as a number, got 'fast'"
    with pytest.raises(SslopsError, match=message):
        Project(project.root).config("pretrain")
