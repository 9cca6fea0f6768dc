"""The registered encoder is served and loaded without pickle: `mlflow models serve` on a loopback port answers
`POST /invocations` with the embeddings of the in-process encoder, and the README's loading snippet works with
MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sslops.cli import main

pytestmark = pytest.mark.integration

NO_PICKLE = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}


@pytest.fixture
def registered(project):
    """The tiny project through register: one version of sslops-encoder, alias champion."""
    for stage in ("prepare", "validate", "augment", "pretrain", "register"):
        assert main([stage]) == 0, stage
    images = np.random.default_rng(0).integers(0, 256, size=(5, 1, 12, 12)).astype(np.float32)
    import torch

    from sslops.adapters import tracking
    from sslops.ml.models import load_encoder_dir

    tracking.connect(project)
    with tracking.registered_encoder("sslops-encoder-fashion-mnist", "champion", project.register_record()) as (
        folder,
        _,
        digests,
    ):
        encoder, _ = load_encoder_dir(folder, *digests)

    with torch.no_grad():
        expected = encoder(torch.as_tensor(images)).numpy()
    uri = f"sqlite:///{project.root / 'mlflow' / 'mlflow.db'}"
    return project, images, expected, uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_snippet_loads_the_champion_without_pickle(registered, tmp_path: Path) -> None:
    project, images, expected, uri = registered
    np.save(tmp_path / "images.npy", images)
    snippet = (
        "import json, sys, mlflow, numpy as np, torch\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        'encoder = mlflow.pytorch.load_model("models:/sslops-encoder-fashion-mnist@champion")\n'
        f"features = encoder(torch.as_tensor(np.load({str(tmp_path / 'images.npy')!r})).float())\n"
        "print(json.dumps(features.detach().numpy().tolist()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **NO_PICKLE},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.allclose(json.loads(done.stdout.splitlines()[-1]), expected, atol=1e-4)


def test_mlflow_models_serve_answers_with_the_same_embeddings(registered, tmp_path: Path) -> None:
    project, images, expected, uri = registered
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - open for the server's whole life, closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/sslops-encoder-fashion-mnist@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env={**os.environ, **NO_PICKLE, "MLFLOW_TRACKING_URI": uri},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                "server did not come up: " + (tmp_path / "serve.log").read_text()[-3000:]
            )
            time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            served = np.asarray(json.loads(answer.read())["predictions"], dtype=np.float32)
        assert served.shape == expected.shape and np.allclose(served, expected, atol=1e-4)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
