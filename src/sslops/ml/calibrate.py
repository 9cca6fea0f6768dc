"""How fast this machine runs the pipeline's kinds of work, measured in a few seconds on random pixels.

A run's cost is steps times the cost of a step, and the cost of a step depends on the CPU's vector units (bf16 or
not), the precision, the memory layout and the model far more than a table of machines could say. So `sslops
estimate` (and `sslops repro`, before it starts) times the real code paths here: the pretraining step of the
configured method (`train.step_seconds`), a fine-tuning step at each batch size the recipes use, the eval-mode
forward pass that features and predictions are made of, a linear probe's L-BFGS fit and the kNN classifier. Random
pixels cost what real ones do: no step branches on the values.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from sslops.ml.device import Precision
from sslops.ml.knn import knn_predict
from sslops.ml.models import Encoder
from sslops.ml.transfer import Classifier, FinetuneConfig, features, finetune, fit_linear_probe


def random_images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """`n` uint8 NHWC images of `shape` (C, H, W)."""
    c, h, w = shape
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def finetune_step(
    encoder: Encoder,
    shape: tuple[int, int, int],
    batch_size: int,
    precision: Precision,
    device: torch.device,
    steps: int = 3,
    repeats: int = 3,
) -> float:
    """Seconds per step of `transfer.finetune` (augmentation, forward, backward, AdamW) at `batch_size` on images
    of `shape`: the median of `repeats` short runs of `steps` steps, after an untimed run that pays for first-call
    allocations. The median, because the first timings on a CPU that was idle come out up to a fifth slower."""
    images = random_images(2 * batch_size, shape)
    labels = np.arange(len(images)) % 10
    cfg = FinetuneConfig("adamw", "fresh", 1, 2, batch_size, 1e-3, 1.0, 1e-4, (0.6, 1.0), 0.5, 0)
    model = Classifier(encoder.untrained_copy(), 10)
    finetune(model, images, labels, cfg, device, False, precision=precision)
    cfg = replace(cfg, epochs=steps, max_steps=steps)
    runs = [finetune(model, images, labels, cfg, device, False, precision=precision) for _ in range(repeats)]
    return statistics.median(run["seconds"] for run in runs) / steps


def forward_image(encoder: Encoder, shape: tuple[int, int, int], device: torch.device, n: int = 2048) -> float:
    """Seconds per image of an eval-mode forward pass in batches of 1,024 (`transfer.features`)."""
    images = random_images(n, shape)
    features(encoder, images[:1024], device)
    started = time.perf_counter()
    features(encoder, images, device)
    return (time.perf_counter() - started) / n


def probe_label_fit(dim: int, n: int = 8192, iterations: int = 100) -> float:
    """Seconds per labelled image of one L-BFGS fit of the linear probe (`transfer.fit_linear_probe` with one
    penalty) on `n` random `dim`-dimensional features: the fit reads every feature at every evaluation, so its cost
    grows with the labels."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, dim, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    started = time.perf_counter()
    fit_linear_probe(x, y, 10, [1e-3], 0, iterations)
    return (time.perf_counter() - started) / n


def knn_pair(dim: int, bank: int = 16384, queries: int = 1024, k: int = 200) -> float:
    """Seconds per (query, bank image) pair of the weighted kNN classifier (`knn.knn_predict`)."""
    gen = torch.Generator().manual_seed(0)
    b = F.normalize(torch.randn(bank, dim, generator=gen), dim=1)
    q = F.normalize(torch.randn(queries, dim, generator=gen), dim=1)
    labels = torch.randint(0, 10, (bank,), generator=gen)
    started = time.perf_counter()
    knn_predict(b, labels, q, 10, k, 0.1)
    return (time.perf_counter() - started) / (bank * queries)
