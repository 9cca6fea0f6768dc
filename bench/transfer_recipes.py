"""Sweep pretraining and fine-tuning recipes of the CPU profile, fast, to choose the defaults in params.yaml.

For each pretraining variant (backbone width, epochs, temperature) it trains SimCLR on the K=8 augmentation
cache exactly as the `pretrain` stage does (same loop, same optimiser, fp32), then measures on the test split:
weighted kNN (whole train bank), the linear probe at 1/10/100 % labels, and LP-FT fine-tuning at 1 % labels
with several backbone LR multipliers, beside the same fine-tuning from random initialisation.
Everything runs through `sslops.ml` (no MLflow/DVC), so it fits on a lent GPU; the numbers it prints
choose recipes, while the figures we report come from the pipeline itself (`dvc repro`). It does not read
params.yaml (it chose the values there): every condition of the sweep is written out below, so a rerun
measures what bench/results/transfer_recipes_h200_*.json hold.

Run: python bench/transfer_recipes.py --data data/fashion-mnist --device cuda --json out.json [--variants a,b]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from fashion_mnist import load

from sslops.ml.augment import AugmentConfig
from sslops.ml.cache import build_cache
from sslops.ml.knn import knn_predict
from sslops.ml.methods import SimCLR, SimCLRConfig
from sslops.ml.models import BackboneConfig, Encoder
from sslops.ml.train import TrainConfig, pretrain
from sslops.ml.transfer import (
    Classifier,
    FinetuneConfig,
    balanced_subset,
    features,
    finetune,
    fit_linear_probe,
    predict,
)
from sslops.ml.views import ViewCache, cached_pairs

PROBE_ITERATIONS = 300  # the sweep's probe (fit_linear_probe's default when the sweep ran)
WEIGHT_DECAYS = [1e-5, 1e-4, 1e-3, 1e-2]
# The SimCLR augmentation recipe of the K=8 cache (the values of params.yaml `augment:`, which rounds 4/3 to
# 1.3333) and the cache's layout: the shard size decides which random stream each view is drawn from.
AUGMENT = AugmentConfig(
    size=None,
    crop_scale=(0.2, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    flip_p=0.5,
    jitter_p=0.8,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.1,
    grayscale_p=0.2,
    blur_p=0.0,
    blur_sigma=(0.1, 2.0),
    rotation=0.0,
)
CACHE_VIEWS, CACHE_SEED, CACHE_SHARD_SIZE = 8, 0, 16384
# The LP-FT recipe (params.yaml's `finetune.recipe` when the sweep ran; its `lpft` trial since issue 15: SGD with
# Nesterov momentum from the linear probe's head); the sweep varies backbone_lr_scale.
FINETUNE = FinetuneConfig(
    optimizer="sgd",
    head="probe",
    epochs=30,
    max_steps=300,
    batch_size=128,
    lr=0.05,
    backbone_lr_scale=0.1,
    weight_decay=5e-4,
    crop_scale=(0.6, 1.0),
    flip_p=0.5,
    seed=0,
)
VARIANTS = {  # name: (width, pool, epochs, temperature)
    "w32_e5_t0.2": (32, 1, 5, 0.2),
    "w32_e5_t0.1": (32, 1, 5, 0.1),
    "w16_e15_t0.2": (16, 1, 15, 0.2),
    "w24_e8_t0.2": (24, 1, 8, 0.2),
    "w32_e10_t0.2": (32, 1, 10, 0.2),
    "w48_e3_t0.2": (48, 1, 3, 0.2),
    "w32p2_e5_t0.2": (32, 2, 5, 0.2),
    "w32p2_e5_t0.1": (32, 2, 5, 0.1),
    "w16p2_e15_t0.1": (16, 2, 15, 0.1),
    "w24p2_e8_t0.1": (24, 2, 8, 0.1),
    "w32p2_e10_t0.1": (32, 2, 10, 0.1),
}


def make_encoder(width: int, pool: int, mean: float, std: float, seed: int) -> Encoder:
    torch.manual_seed(seed)
    # stem_width None: the first conv as wide as the rest (the sweep predates params.yaml's 16-channel stem);
    # small_stem applies to resnets only.
    backbone = BackboneConfig(name="small_cnn", in_channels=1, width=width, small_stem=True, pool=pool, stem_width=None)
    return Encoder(backbone, [mean], [std])


def evaluate_encoder(encoder: Encoder, data, device, fractions, ft_scales, seed: int, pretrained: bool) -> dict:
    xtr, ytr, xte, yte = data
    out: dict = {}
    encoder.to(device)
    ftr, fte = features(encoder, xtr, device), features(encoder, xte, device)
    norm = torch.nn.functional.normalize
    pred = knn_predict(norm(ftr, dim=1), torch.as_tensor(ytr), norm(fte, dim=1), 10, 200, 0.1)
    out["knn_full"] = float((pred.numpy() == yte).mean())
    for frac in fractions:
        idx = balanced_subset(ytr, frac, None, seed)
        t = time.perf_counter()
        probe, wd = fit_linear_probe(ftr[idx], torch.as_tensor(ytr[idx]), 10, WEIGHT_DECAYS, seed, PROBE_ITERATIONS)
        with torch.no_grad():
            out[f"probe_{frac}"] = float((probe(fte).argmax(1).numpy() == yte).mean())
        out[f"probe_{frac}_wd"], out[f"probe_{frac}_s"] = wd, time.perf_counter() - t
        pred = knn_predict(norm(ftr[idx], dim=1), torch.as_tensor(ytr[idx]), norm(fte, dim=1), 10, 200, 0.1)
        out[f"knn_{frac}"] = float((pred.numpy() == yte).mean())
        for scale in ft_scales.get(frac, []):
            model = Classifier(copy.deepcopy(encoder), 10)
            model.head.load_state_dict(probe.state_dict())
            cfg = replace(FINETUNE, backbone_lr_scale=scale, seed=seed)
            stats = finetune(model.to(device), xtr[idx], ytr[idx], cfg, device, pretrained=pretrained)
            out[f"ft_{frac}_scale{scale}"] = float((predict(model, xte, device) == yte).mean())
            out[f"ft_{frac}_scale{scale}_s"] = stats["seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/fashion-mnist"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    data = load(args.data)
    xtr = data[0]
    mean, std = float(xtr.mean() / 255), float(xtr.std() / 255)
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    tmp = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    build_cache(xtr, np.arange(len(xtr)), AUGMENT, CACHE_VIEWS, CACHE_SEED, tmp, CACHE_SHARD_SIZE, progress=False)
    cache = ViewCache.open(tmp)
    print(f"cache built in {time.perf_counter() - t:.1f}s", flush=True)
    steps = len(cache) // 256
    scratch_done: set[tuple[int, int]] = set()
    for name in args.variants.split(","):
        width, pool, epochs, temperature = VARIANTS[name]
        if (width, pool) not in scratch_done:  # the random-init baseline depends on the architecture only
            scratch_done.add((width, pool))
            res = evaluate_encoder(
                make_encoder(width, pool, mean, std, 0),
                data,
                device,
                [0.01, 0.1, 1.0],
                {0.01: [1.0], 0.1: [1.0]},
                0,
                False,
            )
            results[f"scratch_w{width}p{pool}"] = res
            print(f"scratch w{width}p{pool}: {json.dumps({k: round(v, 4) for k, v in res.items()})}", flush=True)
        method = SimCLR(make_encoder(width, pool, mean, std, 0), (1, 28, 28), SimCLRConfig(512, 128, temperature))
        cfg = TrainConfig(  # the pretrain stage's optimiser as the CPU profile sets it, in fp32
            epochs=epochs,
            batch_size=256,
            optimizer="lars",
            base_lr=1.2,
            weight_decay=1e-6,
            momentum=0.9,
            warmup_epochs=1,
            final_lr_fraction=0.0,
            amp="off",
            channels_last=True,
            compile=False,
            seed=0,
        )
        t = time.perf_counter()
        history = pretrain(
            method,
            lambda e: cached_pairs(cache, 256, e, 0),
            steps,
            cfg,
            device,
            tmp / f"{name}.pt",
            name,
            progress=False,
        )
        res = {"pretrain_s": time.perf_counter() - t, "loss": history[-1].loss}
        res.update(
            evaluate_encoder(
                method.encoder, data, device, [0.01, 0.1, 1.0], {0.01: [0.0, 0.1, 0.3, 1.0], 0.1: [0.1]}, 0, True
            )
        )
        results[name] = res
        print(f"{name}: {json.dumps({k: round(v, 4) for k, v in res.items()})}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
