"""The GPU profile at 600 labels: does a ResNet-18 pretrained for longer on a GPU earn what the CPU profile cannot?

Issue 15 asks for a gain of at least 3 points over the best scratch recipe at 1 % of Fashion-MNIST's labels; on the
2-core CPUs the small network gains +1.5 to +2 (docs/benchmarks.md). This script measures the `gpu` profile of
params.yaml (`pretrain.profiles.gpu` merged over `pretrain:`: ResNet-18 with the small-image stem, batch 512, bf16,
the method of `pretrain.method`) on a lent GPU, in two roles that can run side by side on one device:

- `pretrained`: pretrain on the 60,000 train images with on-the-fly batched augmentation on the GPU (params.yaml's
  `augment:` recipe, as the pretrain stage does with no cache) for as many epochs as fit in `--pretrain-s` seconds at
  the rate a short calibration run measured (the cosine schedule then ends where the budget does); then kNN over the
  whole train bank, and at 1 % of the labels the linear probe and fine-tuning, both scored on test;
- `scratch`: the same architecture at a seeded random init, fine-tuned alike.

Fine-tuning at 1 % follows the finetune stage and bench/finetune_search.py: draws 0..`finetune.draws`-1 of a
class-balanced subset; every trial of `finetune.trials` is fitted on part of each subset and scored on the held-out
rest (`finetune.search.holdout`, the stage's split); the trial with the best mean held-out accuracy over the draws (the
earlier one on a tie) is fitted on the whole subset and scored on test. The trial params.yaml chose on the CPU for
this budget is fitted first, so that a run cut short by `--deadline-s` still has a test figure per draw.

Everything runs through sslops.ml and sslops.config (torch, numpy, pydantic, PyYAML; no MLflow, DVC or GX), so it
fits on a device machine with pydantic carried as wheels. Each result is appended to `--out` as one JSON line the
moment it exists. Run (the two roles side by side, as docs/benchmarks.md did):

  python bench/gpu_profile.py --role pretrained --data <fashion-mnist idx folder> --out pre.jsonl &
  python bench/gpu_profile.py --role scratch --data <fashion-mnist idx folder> --out scratch.jsonl
  python bench/gpu_profile.py --role pretrained --epochs 18 --seed 1 --trial base ...  # another seed, a fixed
                                                    # schedule, the trial an earlier search chose
  python bench/gpu_profile.py --summarize bench/results/gpu_profile_h200_*.jsonl     # the tables of benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from fashion_mnist import load

from sslops.commands.report import mean_std
from sslops.config.schema import AugmentParams, FinetuneParams, PretrainParams, Recipe
from sslops.config.validation import method_knobs, parse_section
from sslops.ml.augment import AugmentConfig, BatchAugment
from sslops.ml.device import amp_name, pick_device
from sslops.ml.knn import knn_accuracy
from sslops.ml.methods import METHOD_CONFIGS, Method, build_method
from sslops.ml.models import BackboneConfig, Encoder, pixel_statistics, resolve_backbone
from sslops.ml.results import mean
from sslops.ml.train import EpochStats, TrainConfig, epochs_for, pretrain
from sslops.ml.transfer import (
    Classifier,
    FinetuneConfig,
    balanced_subset,
    features,
    finetune,
    fit_linear_probe,
    holdout_split,
    predict,
)
from sslops.ml.views import on_the_fly_pairs

ROOT = Path(__file__).resolve().parents[1]
TASK, BUDGET, FRACTION = "fashion-mnist", "frac_0.01", 0.01  # 600 labels: the budget of issue 15's target
CALIBRATION_STEPS = 30  # timed after as many warm-up steps: the rate that sizes the pretraining


class Log:
    """Appends one JSON object per result to a file (and prints it), so a run cut short keeps what it measured."""

    def __init__(self, path: Path, role: str):
        self.path, self.role, self.started = path, role, time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, kind: str, **values: Any) -> None:
        line = json.dumps(
            {"role": self.role, "kind": kind, "t": round(time.perf_counter() - self.started, 1), **values}
        )
        print(line, flush=True)
        with self.path.open("a") as fh:
            fh.write(line + "\n")

    def left(self, deadline_s: float) -> float:
        return deadline_s - (time.perf_counter() - self.started)


def sections(
    profile: str, method: str | None, params: Path = ROOT / "params.yaml"
) -> tuple[PretrainParams, AugmentParams, FinetuneParams]:
    """The pretrain (with `profile` selected), augment and finetune sections of `params`, validated."""
    raw = yaml.safe_load(params.read_text())
    pre = {**raw["pretrain"], "profile": profile} | ({"method": method} if method else {})
    return (
        parse_section("pretrain", pre),
        parse_section("augment", raw["augment"]),
        parse_section("finetune", raw["finetune"]),
    )


def make_encoder(images: np.ndarray, cfg: PretrainParams) -> Encoder:
    """The profile's encoder, its input normalised as the pretrain stage normalises it."""
    mean, std = pixel_statistics(images, np.arange(len(images)))
    backbone = cfg.backbone.to_core(BackboneConfig, in_channels=int(images.shape[-1]))
    return Encoder(resolve_backbone(backbone, min(images.shape[1:3])), mean, std)


def run_pretraining(
    images: np.ndarray,
    cfg: PretrainParams,
    augment: AugmentParams,
    device: torch.device,
    budget_s: float,
    fixed_epochs: int | None,
    log: Log,
) -> Encoder:
    """Pretrain the profile's method for the whole epochs that fit in `budget_s` at the calibrated rate, at most the
    profile's own budget (`pretrain.images`)."""
    recipe = BatchAugment(augment.to_core(AugmentConfig))
    steps_per_epoch = len(images) // cfg.batch_size
    shape = (images.shape[3], images.shape[1], images.shape[2])

    def batches(limit: int | None) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        def source(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            pairs = on_the_fly_pairs(images, recipe, cfg.batch_size, epoch, cfg.seed, device=device)
            yield from itertools.islice(pairs, limit)

        return source

    def train(epochs: int, steps: int, limit: int | None, checkpoint: Path) -> tuple[Method, list[EpochStats]]:
        torch.manual_seed(cfg.seed)
        method = build_method(method_knobs(cfg, METHOD_CONFIGS), make_encoder(images, cfg), shape)
        core = cfg.to_core(TrainConfig, epochs=epochs, warmup_epochs=cfg.warmup_fraction * epochs)
        history = pretrain(method, batches(limit), steps, core, device, checkpoint, checkpoint.stem, progress=False)
        return method, history

    # The loop saves a checkpoint every epoch: in memory where a tmpfs has room, so that the disk does not time it.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 2**30 else None
    with tempfile.TemporaryDirectory(prefix="sslops-gpu-profile-", dir=shm) as tmp:
        epochs = fixed_epochs
        if epochs is None:  # calibration: a short "epoch" of warm-up steps, then one of timed steps (it times epochs)
            history = train(2, CALIBRATION_STEPS, CALIBRATION_STEPS, Path(tmp) / "calibration.pt")[1]
            rate = history[-1].images_per_s
            fits = max(1, int(budget_s * rate / (steps_per_epoch * cfg.batch_size)))
            epochs = min(fits, epochs_for(cfg.images, cfg.batch_size, steps_per_epoch))  # at most the profile's budget
            log("calibration", images_per_s=round(rate, 1), epochs=epochs, steps_per_epoch=steps_per_epoch)
        started = time.perf_counter()
        net, history = train(epochs, steps_per_epoch, None, Path(tmp) / "run.pt")
    seconds = time.perf_counter() - started
    log(
        "pretrain",
        method=cfg.method,
        seed=cfg.seed,
        epochs=epochs,
        train_seconds=round(sum(h.seconds for h in history), 1),
        images=epochs * steps_per_epoch * cfg.batch_size,
        seconds=round(seconds, 1),
        images_per_s=round(epochs * steps_per_epoch * cfg.batch_size / seconds, 1),
        loss=[round(h.loss, 4) for h in history],
        amp=amp_name(cfg.amp, device),
        batch_size=cfg.batch_size,
        backbone=net.encoder.config.to_dict(),
    )
    return net.encoder


class Transfer:
    """Linear probe and fine-tuning of one encoder at 1 % of the labels, the recipe chosen on held-out labels."""

    def __init__(self, data: tuple, cfg: FinetuneParams, init: str, device: torch.device, log: Log, deadline_s: float):
        self.data, self.cfg, self.init, self.device = data, cfg, init, device
        self.log, self.deadline_s = log, deadline_s
        self.n_classes = int(data[1].max()) + 1
        self.subsets = [balanced_subset(data[1], FRACTION, None, cfg.seed + d) for d in range(cfg.draws)]

    def fit(self, encoder: Encoder, recipe: Recipe, seed: int, idx: np.ndarray, probe: torch.nn.Module | None):
        """A copy of `encoder` with a new head (the probe's for an LP-FT recipe) fine-tuned on train rows `idx`."""
        xtr, ytr = self.data[0], self.data[1]
        torch.manual_seed(seed)
        model = Classifier(copy.deepcopy(encoder), self.n_classes)
        if recipe.head == "probe" and probe is not None:
            model.head.load_state_dict(probe.state_dict())
        core = recipe.to_core(FinetuneConfig, seed=seed)
        stats = finetune(model.to(self.device), xtr[idx], ytr[idx], core, self.device, self.init == "pretrained")
        return model, stats

    def probe(self, feats: torch.Tensor, idx: np.ndarray, seed: int) -> torch.nn.Module:
        y = torch.as_tensor(self.data[1][idx])
        probe, _ = fit_linear_probe(
            feats[idx], y, self.n_classes, self.cfg.probe.weight_decays, seed, self.cfg.probe.iterations
        )
        return probe

    def test(self, model: torch.nn.Module) -> float:
        return float((predict(model, self.data[2], self.device) == self.data[3]).mean())

    def final(self, encoder: Encoder, feats: torch.Tensor, trial: str, draws: range) -> None:
        for draw in draws:
            if self.log.left(self.deadline_s) < 0:
                self.log("skipped", init=self.init, what=f"final {trial} draw {draw}: past the deadline")
                return
            seed, idx, recipe = self.cfg.seed + draw, self.subsets[draw], self.cfg.trials[trial]
            probe = self.probe(feats, idx, seed) if recipe.head == "probe" else None
            model, stats = self.fit(encoder, recipe, seed, idx, probe)
            acc = self.test(model)
            self.log("test", init=self.init, protocol="finetune", trial=trial, draw=draw, acc=acc, **_stats(stats))

    def run(
        self, encoder: Encoder, feats: torch.Tensor, test_feats: torch.Tensor, trial: str | None, search: list[str]
    ) -> None:
        """Probe `encoder`'s train and test features, then fine-tune with params.yaml's choice for this budget,
        search the `search` trials, and fit the search's choice; or, with `trial` (one chosen by an earlier search),
        fine-tune with that trial alone."""
        for draw, idx in enumerate(self.subsets):  # the linear probe at 1 %, on test
            probe = self.probe(feats, idx, self.cfg.seed + draw)
            with torch.no_grad():
                acc = float((probe(test_feats).argmax(1).numpy() == self.data[3]).mean())
            self.log("test", init=self.init, protocol="linear", draw=draw, acc=acc)
        if trial is not None:
            self.final(encoder, feats, trial, range(self.cfg.draws))
            return
        cpu_choice = self.cfg.recipe_for(TASK, BUDGET, self.init)[0]
        self.final(encoder, feats, cpu_choice, range(self.cfg.draws))
        held: dict[str, list[float]] = {}
        for trial in search:
            recipe = self.cfg.trials[trial]
            for draw, idx in enumerate(self.subsets):
                if self.log.left(self.deadline_s) < 0:
                    self.log("skipped", init=self.init, what=f"search {trial} draw {draw}: past the deadline")
                    return
                seed = self.cfg.seed + draw
                held_pos, fit_pos = holdout_split(len(idx), self.cfg.search.holdout, seed)  # the stage's split
                held_idx, fit_idx = idx[held_pos], idx[fit_pos]
                probe = self.probe(feats, fit_idx, seed) if recipe.head == "probe" else None
                model, stats = self.fit(encoder, recipe, seed, fit_idx, probe)
                acc = float((predict(model, self.data[0][held_idx], self.device) == self.data[1][held_idx]).mean())
                held.setdefault(trial, []).append(acc)
                self.log("holdout", init=self.init, trial=trial, draw=draw, acc=acc, **_stats(stats))
        means = {trial: mean(accs) for trial, accs in held.items()}  # exact: tied draws tie in any order
        chosen = max(means, key=lambda t: (means[t], -list(means).index(t)))  # the earlier trial on a tie
        self.log("chosen", init=self.init, trial=chosen, holdout_means=means, cpu_choice=cpu_choice)
        if chosen != cpu_choice:
            self.final(encoder, feats, chosen, range(self.cfg.draws))


def _stats(stats: dict[str, float]) -> dict[str, float]:
    return {"steps": int(stats["steps"]), "seconds": round(stats["seconds"], 2)}


def _processes(path: Path) -> list[dict[str, Any]]:
    """One dict per process whose lines `path` holds (a `setup` line starts one, a `provenance` line before it says
    which profile ran where older setup lines did not): its pretraining, held-out choice and test results."""
    procs: list[dict[str, Any]] = []
    provenance: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "provenance":
            provenance = entry
        elif entry["kind"] == "setup":
            procs.append({"file": path.name, "role": entry["role"], "profile": entry.get("profile"), "tests": []})
            procs[-1]["profile"] = procs[-1]["profile"] or provenance.get("profile")
        elif entry["kind"] in ("pretrain", "chosen"):
            procs[-1][entry["kind"]] = entry
        elif entry["kind"] == "test":
            procs[-1]["tests"].append(entry)
    return procs


def _seed(pretrain: dict[str, Any]) -> int:
    """The pretraining seed; lines written before the script logged it ran params.yaml's (0)."""
    return int(pretrain.get("seed", 0))


def summarize(paths: list[Path]) -> str:
    """Markdown: every process's test results at 1 % (mean ± std over the label draws), then the gain of each
    pretraining setting over the best scratch fine-tuning, best against best: the scratch side is the fine-tuning
    whose held-out accuracy was best (its architecture and trial chosen without test data); the pretrained side
    is each setting's chosen trial (the search's, or `--trial`), its spread over the pretraining seeds."""
    procs = [proc for path in paths for proc in _processes(path)]
    networks = {}  # the network each profile resolves to at 28 px (every run here was Fashion-MNIST)
    for profile in {proc["profile"] for proc in procs}:
        backbone = sections(profile, None)[0].backbone.to_core(BackboneConfig, in_channels=1)
        networks[profile] = f"{profile} ({resolve_backbone(backbone, 28).name})"
    for proc in procs:
        proc["profile"] = networks[proc["profile"]]
    rows = [
        "| file | init | profile | pretraining | protocol (trial) | test accuracy at 600 labels, % |",
        "|---|---|---|---|---|---|",
    ]
    for proc in procs:
        pre = proc.get("pretrain")
        setting = f"{pre['method']}, seed {_seed(pre)}, {pre['epochs']} epochs" if pre else "none"
        groups: dict[str, list[float]] = {}
        for test in proc["tests"]:
            label = f"{test['protocol']} ({test['trial']})" if "trial" in test else test["protocol"]
            label = "knn (all 60,000 train labels)" if label == "knn" else label
            groups.setdefault(label, []).append(test["acc"])
        chosen = proc.get("chosen", {}).get("trial")
        for group, accs in groups.items():
            mark = " held-out choice" if chosen and group == f"finetune ({chosen})" else ""
            cells = [proc["file"], proc["role"], proc["profile"], setting, f"{group}{mark}", mean_std(accs, unit="")]
            rows.append(f"| {' | '.join(cells)} |")

    def finetuned(proc: dict[str, Any], trial: str) -> list[float]:
        return [t["acc"] for t in proc["tests"] if t["protocol"] == "finetune" and t.get("trial") == trial]

    scratch = [p for p in procs if p["role"] == "scratch" and "chosen" in p]
    if not scratch:  # a scratch side fitted with --trial alone was chosen by no search here: no best to compare with
        return "\n".join([*rows, "", "No scratch run searched its recipe on held-out labels: no gain to report."])
    best = max(scratch, key=lambda p: p["chosen"]["holdout_means"][p["chosen"]["trial"]])
    best_trial = best["chosen"]["trial"]
    best_accs = finetuned(best, best_trial)
    best_mean = mean(best_accs)
    where = f"{best['profile']} profile, trial {best_trial}: {mean_std(best_accs, unit='')} % on test"
    lines = ["", f"Best scratch (best held-out accuracy): {where}.", ""]
    settings: dict[tuple, list[float]] = {}
    for proc in procs:
        pre = proc.get("pretrain")
        trials = {t["trial"] for t in proc["tests"] if t["protocol"] == "finetune"}
        trial = proc.get("chosen", {}).get("trial") or (trials.pop() if len(trials) == 1 else None)
        if pre and trial:
            key = (proc["profile"], pre["method"], pre["epochs"], trial)
            settings.setdefault(key, []).append(mean(finetuned(proc, trial)) - best_mean)
    lines += [
        "| profile | method | epochs | trial | pretraining seeds | gain over the best scratch, points |",
        "|---|---|---|---|---|---|",
    ]
    for (profile, method, epochs, trial), gains in settings.items():
        lines.append(f"| {profile} | {method} | {epochs} | {trial} | {len(gains)} | {mean_std(gains, signed=True)} |")
    return "\n".join(rows + lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--summarize", type=Path, nargs="+", help="print the tables of these results files, run nothing"
    )
    parser.add_argument("--role", choices=("pretrained", "scratch"))
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, help="JSON lines, appended")
    parser.add_argument("--method", help="instead of params.yaml's pretrain.method")
    parser.add_argument("--profile", default="gpu", help="pretrain.profiles.<name> (cpu: a quick smoke test)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the params file to read")
    parser.add_argument("--pretrain-s", type=float, default=300.0, help="pretraining budget (seconds of training)")
    parser.add_argument("--epochs", type=int, help="pretrain this many epochs (no calibration, no time budget)")
    parser.add_argument("--seed", type=int, help="instead of params.yaml's pretrain.seed")
    parser.add_argument("--trial", help="fine-tune with this trial of finetune.trials only (no search)")
    parser.add_argument("--search-trials", help="comma-separated trials to search (default: all of finetune.trials)")
    parser.add_argument("--deadline-s", type=float, default=540.0, help="start no fine-tune after this many seconds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-images", type=int, help="use only the first N train images (a smoke test)")
    parser.add_argument("--batch-size", type=int, help="instead of the profile's (a smoke test)")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    if not (args.role and args.out):
        parser.error("--role and --out are needed to run")
    log = Log(args.out, args.role)
    pre, augment, fine = sections(args.profile, args.method, args.params)
    overrides = {"batch_size": args.batch_size, "seed": args.seed}
    pre = pre.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    search = args.search_trials.split(",") if args.search_trials else list(fine.trials)
    unknown = [t for t in [*search, args.trial] if t is not None and t not in fine.trials]
    if unknown:
        raise SystemExit(f"{', '.join(unknown)}: not in finetune.trials ({', '.join(fine.trials)})")
    device = pick_device(args.device)
    xtr, ytr, xte, yte = load(args.data)
    if args.train_images:
        xtr, ytr = xtr[: args.train_images], ytr[: args.train_images]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    tf32 = {"cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
    setup = {"device": name, "torch": torch.__version__, "profile": args.profile, "method": pre.method, **tf32}
    log("setup", **setup, train_images=len(xtr), argv=sys.argv[1:])
    if args.role == "pretrained":
        encoder = run_pretraining(xtr, pre, augment, device, args.pretrain_s, args.epochs, log)
    else:
        torch.manual_seed(fine.seed)  # the finetune stage's scratch encoder: seeded, same architecture and input
        encoder = make_encoder(xtr, pre).untrained_copy().to(device)
    feats, test_feats = features(encoder, xtr, device), features(encoder, xte, device)
    if args.role == "pretrained":
        log("test", init="pretrained", protocol="knn", acc=knn_accuracy(feats, ytr, test_feats, yte, 200, 0.1))
    Transfer((xtr, ytr, xte, yte), fine, args.role, device, log, args.deadline_s).run(
        encoder, feats, test_feats, args.trial, search
    )
    log("done")


if __name__ == "__main__":
    main()
