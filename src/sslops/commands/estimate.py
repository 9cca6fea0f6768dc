"""What a run will cost before it is spent: about how long each stage that `dvc repro` will run takes here.

Each stage's time is its work counted in the units `sslops.ml.calibrate` times on this machine (pretraining steps,
fine-tuning steps per batch size, images through an encoder), plus a fixed part per stage: starting Python and
importing torch, MLflow and Great Expectations, reading the data, logging. The work is counted from params.yaml and
the sizes of the data as the last run's metrics (committed with the code) recorded them, so a fresh clone has an
estimate before a single image is prepared; a stage whose data sizes are unknown is shown without one.

The estimate is an upper bound in one way: DVC restores a stage from its run cache instead of running it when it
ran with the same inputs before.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sslops.config import Project
from sslops.ml.results import parse_budget

if TYPE_CHECKING:
    import torch

    from sslops.ml.device import Precision
    from sslops.ml.models import Encoder

# Seconds a stage takes beyond the work counted below (interpreter, imports, reading data, MLflow, GX, plots),
# measured on a 2-core CPU (docs/benchmarks.md, the profile of `make run`): what a stage costs with no counted work.
FIXED_S = {
    "prepare": 10.0,
    "validate": 12.0,
    "augment": 9.0,
    "pretrain": 10.0,
    "register": 12.0,
    "task_prepare": 6.0,
    "task_validate": 11.0,
    "finetune": 10.0,
    "evaluate": 14.0,
}
AUGMENT_VIEWS_PER_S = 80_000.0  # the augment stage's cache writing, measured with FIXED_S
TSNE_S_PER_POINT = 0.0055  # evaluate's two t-SNE maps (scikit-learn), per point mapped, measured with FIXED_S


@dataclass
class StageCost:
    """One stage's estimate: seconds (None when its data sizes are unknown) and the work they stand for."""

    stage: str
    seconds: float | None
    work: str


@dataclass
class Estimate:
    """The stages that will run, each with its estimate, and what the rates were measured on."""

    machine: str
    precision: dict[str, str]  # pretrain / finetune: bf16, fp16 or off, as `auto` resolved here
    calibration_s: float
    stages: list[StageCost] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(s.seconds or 0.0 for s in self.stages)

    def seconds(self) -> dict[str, float]:
        """{stage address: estimated seconds}: what each stage's MLflow run records beside its actual time."""
        return {s.stage: round(s.seconds, 1) for s in self.stages if s.seconds is not None}

    def to_dict(self) -> dict[str, Any]:
        """`sslops estimate --json`: for scripts that decide whether a run fits their time (CI's `make run`)."""
        return {
            "machine": self.machine,
            "precision": self.precision,
            "total_s": round(self.total, 1),
            "unknown": [s.stage for s in self.stages if s.seconds is None],
            "stages": {s.stage: None if s.seconds is None else round(s.seconds, 1) for s in self.stages},
        }


@dataclass(frozen=True)
class _Rates:
    """Seconds per unit of work here (`sslops.ml.calibrate`)."""

    pretrain_step: float
    finetune_step: dict[int, float]  # per batch size
    forward_image: float
    probe_label_fit: float  # one L-BFGS fit of a linear probe, per labelled image
    knn_pair: float  # per (query, bank image)


def estimate(project: Project, stages: list[str]) -> Estimate:
    """Calibrate on this machine (a few seconds) and estimate each of `stages` (DVC addresses, in run order)."""
    from sslops.ml.device import Precision, machine, pick_device

    pretrain, finetune = project.config("pretrain"), project.config("finetune")
    device = pick_device(pretrain.device)
    tuned = Precision.resolve(finetune.amp, finetune.channels_last, pick_device(finetune.device))
    pre = Precision.resolve(pretrain.amp, pretrain.channels_last, device)
    out = Estimate(machine(device), {"pretrain": pre.amp, "finetune": tuned.amp}, 0.0)
    if not stages:
        return out
    shape = _input_shape(project)
    started = time.perf_counter()
    rates = _calibrate(project, shape, device, (tuned, pick_device(finetune.device))) if shape else None
    out.calibration_s = time.perf_counter() - started
    for stage in stages:
        kind, _, task = stage.partition("@")
        seconds, work = _stage(project, kind, task, rates)
        out.stages.append(StageCost(stage, None if seconds is None else seconds + FIXED_S.get(kind, 0.0), work))
    return out


def _metrics(project: Project, task: str | None, stage: str) -> dict[str, Any]:
    path = project.outputs(task or None).metrics / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _input_shape(project: Project) -> tuple[int, int, int] | None:
    """(H, W, C) of the pretraining images as the last prepare recorded them; None before any prepare ran."""
    shape = _metrics(project, None, "prepare").get("shape")
    return tuple(shape) if shape else None


def _calibrate(
    project: Project, shape: tuple[int, int, int], device: torch.device, tuning: tuple[Precision, torch.device] | None
) -> _Rates:
    """Time each kind of work with the configured method, backbone and precisions: pretraining on `device`,
    fine-tuning in the precision and on the device of `tuning` (None: not needed, not timed), the rest (features,
    probes, kNN) as the stages compute them."""
    import torch

    from sslops.ml import calibrate
    from sslops.ml.train import step_seconds
    from sslops.stages.pretrain import build_method_for, schedule

    torch.manual_seed(0)
    pretrain, augment, finetune = (project.config(s) for s in ("pretrain", "augment", "finetune"))
    channels = shape[2]
    method = build_method_for(shape, [0.5] * channels, [0.25] * channels, pretrain, augment)
    encoder: Encoder = method.encoder.untrained_copy()
    chw = (channels, shape[0], shape[1])
    batches = {finetune.recipe.batch_size} | {r.batch_size for r in finetune.trials.values()}
    return _Rates(
        pretrain_step=step_seconds(method, schedule(pretrain, 2, warn=lambda _: None), device),
        finetune_step={b: calibrate.finetune_step(encoder, chw, b, *tuning) for b in sorted(batches)} if tuning else {},
        forward_image=calibrate.forward_image(encoder.eval(), chw, tuning[1] if tuning else device),
        probe_label_fit=calibrate.probe_label_fit(encoder.feature_dim),
        knn_pair=calibrate.knn_pair(encoder.feature_dim),
    )


def _stage(project: Project, kind: str, task: str, rates: _Rates | None) -> tuple[float | None, str]:
    """(seconds of counted work, what it is) for one stage; (None, why) when the sizes are unknown."""
    if kind in ("prepare", "validate", "register", "task_prepare", "task_validate"):
        return 0.0, "start-up, data, tracking"
    if rates is None:
        return None, "unknown until prepare has run once"
    if kind == "augment":
        views, images = project.config("augment").views, _pretrain_images(project)
        if images is None:
            return None, "unknown until prepare has run once"
        return views * images / AUGMENT_VIEWS_PER_S, f"{views} views of {images:,} images"
    if kind == "pretrain":
        return _pretrain(project, rates)
    if project.config("tasks")[task].dense:
        return None, f"a {project.config('tasks')[task].kind} task: not estimated (docs/benchmarks.md has its minutes)"
    sizes = _metrics(project, task, "prepare")
    if not sizes:
        return None, f"unknown until task_prepare@{task} has run once"
    if kind == "finetune":
        return _finetune(project, task, sizes, rates)
    if kind == "evaluate":
        return _evaluate(project, task, sizes, rates)
    return 0.0, "not estimated"


def _pretrain_images(project: Project) -> int | None:
    """The images pretraining reads (train and unlabeled), as the last run recorded them."""
    if "images" in (augmented := _metrics(project, None, "augment")):
        return int(augmented["images"])
    prepared = _metrics(project, None, "prepare")
    return prepared["images_train"] + prepared["images_unlabeled"] if prepared else None


def _pretrain(project: Project, rates: _Rates) -> tuple[float | None, str]:
    """The pretrain stage's counted work, for the data sizes the last prepare recorded."""
    images, prepared = _pretrain_images(project), _metrics(project, None, "prepare")
    if images is None or not prepared:
        return None, "unknown until prepare has run once"
    return _pretrain_work(project, rates, images, prepared["images_train"])


def _pretrain_work(project: Project, rates: _Rates, images: int, labelled: int) -> tuple[float, str]:
    """Optimiser steps, and the monitor after each epoch: the validation queries and a bank through the encoder and
    the kNN between them; after the last, all other train images as the bank, and one linear probe fit on them."""
    from sslops.ml.train import epochs_for

    cfg = project.config("pretrain")
    steps_per_epoch = max(1, images // cfg.batch_size)
    epochs = epochs_for(cfg.images, cfg.batch_size, steps_per_epoch)
    val = round(cfg.val_fraction * labelled)
    last_bank = labelled - val
    bank = min(cfg.knn.monitor_bank_size or last_bank, last_bank)  # null: every other labelled image
    seconds = epochs * steps_per_epoch * rates.pretrain_step
    seconds += ((epochs - 1) * (val + bank) + labelled) * rates.forward_image
    seconds += ((epochs - 1) * bank + last_bank) * val * rates.knn_pair + last_bank * rates.probe_label_fit
    return seconds, f"{epochs * steps_per_epoch:,} steps of {rates.pretrain_step:.3f} s"


def pretrain_estimate(project: Project, shape: tuple[int, int, int], images: int, labelled: int) -> StageCost:
    """The pretrain stage's cost on this machine for data not prepared yet (`sslops init`): `images` of `shape`
    (H, W, C), `labelled` of them with labels, calibrated as `estimate` does."""
    from sslops.ml.device import pick_device

    rates = _calibrate(project, shape, pick_device(project.config("pretrain").device), None)  # no fine-tuning steps
    seconds, work = _pretrain_work(project, rates, images, labelled)
    return StageCost("pretrain", seconds + FIXED_S["pretrain"], work)


def _subsets(project: Project, task: str, sizes: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(budget key, labels, draws) of each of the task's label budgets."""
    from sslops.ml.results import budget_key

    cfg, n, classes = project.config("finetune"), sizes["images_train"], sizes["classes"]
    out = []
    for budget in project.config("tasks")[task].budgets:
        fraction, per_class = parse_budget(budget)
        if fraction == 1:
            out.append((budget_key(budget), n, 1))
            continue
        each = per_class if per_class is not None else max(1, round(fraction * n / classes))
        out.append((budget_key(budget), min(n, each * classes), cfg.draws))
    return out


def _finetune(project: Project, task: str, sizes: dict[str, Any], rates: _Rates) -> tuple[float, str]:
    """Every model's steps at its recipe's batch size, the train features of both encoders, the linear probes of the
    three inits (each fits every penalty on 80 % of its labels, then the chosen one on all), and the distillation
    students; for a task without committed recipe choices, also its own search (each trial of
    `finetune.search.auto` on the held-out split of every subset), after which the model uses the base recipe's
    cost (the choice is not known in advance)."""
    from sslops.ml.transfer import PROBE_HOLDOUT, FinetuneConfig

    cfg, n = project.config("finetune"), sizes["images_train"]
    fits = 1 + (1 - PROBE_HOLDOUT) * len(cfg.probe.weight_decays) if len(cfg.probe.weight_decays) > 1 else 1
    searched = cfg.searched_in_stage(task)
    seconds, steps, models = 2 * n * rates.forward_image, 0, 0
    for key, labels, draws in _subsets(project, task, sizes):
        seconds += 3 * draws * labels * fits * rates.probe_label_fit
        for init in ("pretrained", "scratch"):
            trained = [(cfg.recipe_for(task, key, init)[1], labels)]  # the model, and its student on all n images
            trained += [(cfg.distill.recipe, n)] if key in cfg.distill.budgets else []
            held_in = round(labels * (1 - cfg.search.holdout))
            trained += [(cfg.trials[trial], held_in) for trial in searched]
            for recipe, pool in trained:
                count = recipe.to_core(FinetuneConfig, seed=0).steps(pool)
                seconds += draws * count * _step(rates, recipe.batch_size)
                steps, models = steps + draws * count, models + draws
    return seconds, f"{models} models, {steps:,} steps"


def _step(rates: _Rates, batch_size: int) -> float:
    """Seconds per fine-tuning step at `batch_size`: measured, else scaled from the nearest measured size."""
    if batch_size in rates.finetune_step:
        return rates.finetune_step[batch_size]
    nearest = min(rates.finetune_step, key=lambda b: abs(math.log(b / batch_size)))
    return rates.finetune_step[nearest] * batch_size / nearest


def _evaluate(project: Project, task: str, sizes: dict[str, Any], rates: _Rates) -> tuple[float, str]:
    """Test predictions of every fine-tuned model, the test and bank features of both encoders, the kNN classifier
    of every subset and init against the test split, the t-SNE maps."""
    cfg = project.config("evaluate")
    subsets = _subsets(project, task, sizes)
    tuned = sum(2 * draws for _, _, draws in subsets)  # fine-tuned models (both inits)
    tests, bank = sizes["images_test"], min(sizes["images_train"], sum(labels * d for _, labels, d in subsets))
    images = (tuned + 2) * tests + 2 * bank
    pairs = 3 * tests * sum(labels * draws for _, labels, draws in subsets)
    points = min(cfg.map_points, tests)
    seconds = images * rates.forward_image + pairs * rates.knn_pair + points * TSNE_S_PER_POINT
    return seconds, f"{images:,} images through an encoder, t-SNE of {points:,} points twice"


def format_estimate(est: Estimate) -> str:
    """The table `sslops repro` prints before the first stage."""
    if not est.stages:
        return "sslops: every stage is up to date (dvc status): nothing to run."
    head = f"sslops: estimate for this machine, {est.machine}; pretraining {est.precision['pretrain']}, "
    lines = [head + f"fine-tuning {est.precision['finetune']} (measured in {est.calibration_s:.1f} s):"]
    width = max(len(s.stage) for s in est.stages)
    for s in est.stages:
        minutes = "      ?" if s.seconds is None else f"{s.seconds / 60:5.1f} min"
        lines.append(f"  {s.stage:<{width}}  {minutes}  {s.work}")
    unknown = sum(s.seconds is None for s in est.stages)
    lines.append(f"  {'total':<{width}}  {est.total / 60:5.1f} min" + (f" + {unknown} unknown" if unknown else ""))
    return "\n".join(lines)


def format_actuals(est: Estimate, actual: dict[str, float]) -> str:
    """Estimate beside the actual wall time of each stage that ran (the stages' own processes timed themselves)."""
    if not actual:
        return ""
    width = max(len(stage) for stage in actual)
    lines = [f"  {'stage':<{width}}  estimate    actual"]
    estimated = est.seconds()
    for stage, seconds in actual.items():
        guess = f"{estimated[stage] / 60:5.1f} min" if stage in estimated else "      ?  "
        lines.append(f"  {stage:<{width}}  {guess}  {seconds / 60:5.1f} min")
    lines.append(f"  {'total':<{width}}  {est.total / 60:5.1f} min  {sum(actual.values()) / 60:5.1f} min")
    return "sslops: time per stage\n" + "\n".join(lines)
