"""Small datasets get a schedule that fits them: a new user's 1,797-image folder through the whole pipeline.

What a new user tried: a folder of 1,797 real digit scans (scikit-learn's `load_digits`) as 32x32 RGB PNGs, about
1,000 of them without labels, run through every stage with the real `dvc repro`. Under the old schedule
(`pretrain.epochs: 10`) that is 10 epochs of 5 optimiser steps at batch 256 = 50 steps, likely far too few to
learn much: this script measures whether it was. The pipeline now budgets pretraining in images seen
(`pretrain.images`, epochs derived, fewer than `pretrain.min_steps` steps warned about); the runs compare:

  old       pretrain.images = 10 epochs' worth on this folder (10 x 5 steps x 256 = 12,800 images): the old
            schedule, expressed in the new knob
  default   pretrain.images from the repository's params.yaml (600,000: 469 epochs, ~2,345 steps here)
  --images  optionally more budgets, each another run (e.g. --images 100000)

and for each one reads what the pipeline itself wrote (no accuracy is computed here):
  metrics/pretrain.json                      epochs, steps, seconds, and the monitor's kNN and linear-probe
                                             accuracy on the validation split carved from the labelled train images
  metrics/tasks/digits-photos/evaluate.json  per label budget (10/class, 100 %), on the 500 test images: best
                                             pretrained protocol, best from-scratch protocol, raw pixels
plus the wall time of each `dvc exp run` and the machine (CPU model, cores, load average before and after).

How: a temporary copy of the project (dvc.yaml, .dvcignore, .gitignore, src/, .dvc/config; git init; dvc init),
as tests/test_pipeline_dvc.py's make_repo builds it, with the folder under data/digits-photos, `dvc add data` and a
commit. params.yaml is the repository's with only the dataset swapped in (prepare: imagefolder at
data/digits-photos, classes '0'..'9', resize.side null; tasks: only `digits-photos`, budgets [10/class, 1.0];
validate.min_rows 100 and min_class_share 0.05, since the repository's 1,000 rows and 2 % are sized for
Fashion-MNIST): default method, backbone `auto` (small_cnn at 32 px), augmentation cache, probe and fine-tuning
recipe. Stages before pretraining (prepare, validate, augment, task_prepare, task_validate) run once, timed
apart; then one `dvc exp run -S pretrain.images=N` per schedule reruns pretrain, register, finetune and evaluate.
The stages run the code installed in this venv (the working tree's src/, as the integration tests do).

The split (deterministic, no random numbers, so a rerun writes the same folder on any machine):
  test       the members of each class, in scikit-learn's order, are cut into 50 equal stretches and the middle
             one of each, position (2i+1)*n//100 for i in 0..49 (n = the class size), is a test image: 50 per
             class, 500 in all; the same rule and images as the `digits` task's export (`sslops fetch-data`)
  train      of the remaining members of each class (m = n - 50, 124..133), again in order, the middle one of each
             of 30 equal stretches, position (2i+1)*m//60 for i in 0..29, keeps its label: 30 per class, 300 in all
  unlabeled  the other 997 (m - 30 per class), in one flat folder without labels
Files are named by their index in `load_digits` (data/digits-photos/train/3/0042.png), so every image can be
traced back. Pixels: the 0..16 integers as uint8 round(v * 255 / 16) (as the digits export), upscaled 8 -> 32 px
with Pillow's bicubic filter, replicated to three channels, saved as RGB PNG.

Run (on an otherwise idle machine: the default schedule is ~2,345 steps of pretraining, minutes on 2 cores):
  .venv/bin/python bench/small_dataset.py --json bench/results/small_dataset.json
  .venv/bin/python bench/small_dataset.py --images 100000 --keep --workdir /tmp/sd --json /tmp/sd.json
Each command's output goes to <workdir>/logs/ (outside the project, so no experiment commits it; tail -f it).
With --keep the project and the logs stay (in the project, `dvc exp show` compares the runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sslops.env import TELEMETRY_OFF  # no telemetry from the tools this starts
from sslops.ml.device import cpu_model

REPO = Path(__file__).resolve().parents[1]
TASK = "digits-photos"
DATA = f"data/{TASK}"
CLASSES = [str(d) for d in range(10)]
SIDE = 32  # px: small enough that `backbone: auto` picks small_cnn, as a user's thumbnails would
TEST_PER_CLASS = 50  # the same 500 test images as the repository's `digits` task
BUDGETS: list[str | float] = ["10/class", 1.0]
COPIED = ("dvc.yaml", ".dvcignore", ".gitignore", "vendor/datadocs/package-lock.json")
GIT = ("git", "-c", "user.name=sslops-bench", "-c", "user.email=bench@sslops.invalid")


# ---------------------------------------------------------------------------------------------------- the data


def middle_positions(n: int, k: int) -> np.ndarray:
    """Positions 0..n-1 of the middle member of each of k equal stretches: spread evenly, no RNG (k <= n)."""
    if k > n:
        raise SystemExit(f"cannot pick {k} members out of {n}")
    return np.array([(2 * i + 1) * n // (2 * k) for i in range(k)], dtype=np.int64)


def assign_splits(labels: np.ndarray, labelled_per_class: int) -> np.ndarray:
    """'test' | 'train' | 'unlabeled' per image, by the rule in the module docstring (stratified, deterministic)."""
    split = np.full(len(labels), "unlabeled", dtype=object)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test = members[middle_positions(len(members), TEST_PER_CLASS)]
        split[test] = "test"
        rest = np.setdiff1d(members, test)  # sorted: scikit-learn's order
        split[rest[middle_positions(len(rest), labelled_per_class)]] = "train"
    return split


def check_test_split(labels: np.ndarray, split: np.ndarray) -> None:
    """The test split must be the digits export's, so the figures compare with the repository's `digits` task.
    Checked against the command's own function; skipped when that does not import (src/ is a working tree)."""
    with contextlib.suppress(ImportError):
        from sslops.commands.digits import split_mask

        if not np.array_equal(split_mask(labels), split == "test"):
            raise SystemExit("the test split differs from `sslops.commands.digits.split_mask`: update assign_splits()")


def write_folder(root: Path, labelled_per_class: int) -> dict[str, int]:
    """The digits as an RGB ImageFolder of 32x32 PNGs: root/{train,test}/<digit>/NNNN.png, root/unlabeled/NNNN.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    values = np.asarray(digits.images).astype(np.int64)
    labels = np.asarray(digits.target).astype(np.int64)
    if values.shape[1:] != (8, 8) or values.min() < 0 or values.max() > 16:
        raise SystemExit(f"load_digits no longer returns N x 8 x 8 integers 0..16 (got {values.shape})")
    pixels = ((values * 255 + 8) // 16).astype(np.uint8)  # round(v * 255 / 16) in integers, as the digits export
    split = assign_splits(labels, labelled_per_class)
    check_test_split(labels, split)
    for i, (image, label, part) in enumerate(zip(pixels, labels, split, strict=True)):
        folder = root / "unlabeled" if part == "unlabeled" else root / part / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(image).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
        big.convert("RGB").save(folder / f"{i:04d}.png")
    return {part: int((split == part).sum()) for part in ("train", "unlabeled", "test")}


# ---------------------------------------------------------------------------------------------------- the project


def project_params(text: str) -> dict[str, Any]:
    """The repository's params.yaml with only the dataset swapped in (and validation thresholds sized for it):
    everything the issue is about (recipe, backbone, pretrain.images, min_steps) stays the repository's."""
    params = yaml.safe_load(text)
    resize = {**(params["prepare"].get("resize") or {}), "side": None}
    params["prepare"].update(format="imagefolder", root=DATA, classes=CLASSES, unlabeled_dir="unlabeled", resize=resize)
    params["tasks"] = {
        TASK: {"kind": "classification", "format": "imagefolder", "root": DATA, "classes": CLASSES, "budgets": BUDGETS}
    }
    # Sized for Fashion-MNIST, min_rows 1,000 would refuse a folder whose labelled part is 800 rows; 0.05 is half
    # the 10 % share each of 10 balanced classes holds here: what a user of a folder this size would set.
    params["validate"].update(min_rows=100, min_class_share=0.05)
    return params


def env() -> dict[str, str]:
    """The environment of every command: this venv first on PATH (DVC's `python -m sslops` stages resolve to it),
    no telemetry, and no SSLOPS_ROOT / MLFLOW_TRACKING_URI that would send the runs to another project's store."""
    out = {**os.environ, **TELEMETRY_OFF, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out.pop("SSLOPS_ROOT", None)
    out.pop("MLFLOW_TRACKING_URI", None)
    return out


def run(cmd: list[str], cwd: Path, log: Path) -> tuple[float, str]:
    """Run `cmd`, its stdout and stderr into `log`; (wall seconds, output). Fails loudly, with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=cwd, env=env(), stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}) after {seconds:.0f} s; {log}:\n{text[-4000:]}")
    return seconds, text


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def make_project(root: Path, labelled_per_class: int) -> dict[str, int]:
    """A copy of this project (pipeline, code, DVC config) with the digits folder, committed to a fresh git repo."""
    root.mkdir(parents=True)
    for name in COPIED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = project_params((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    logs = root.parent / "logs"  # beside the project: git add -A and dvc exp run must not pick them up
    run(["git", "init", "-q"], root, logs / "git-init.log")
    run(dvc("init", "-q"), root, logs / "dvc-init.log")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    counts = write_folder(root / DATA, labelled_per_class)
    run(dvc("add", "-q", "data"), root, logs / "dvc-add.log")
    run(["git", "add", "-A"], root, logs / "git-add.log")
    run([*GIT, "commit", "-qm", f"digits as a {SIDE} px RGB folder"], root, logs / "git-commit.log")
    return counts


# ---------------------------------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class Schedule:
    name: str  # the experiment's name (dvc exp show)
    label: str  # how the table reads
    images: int  # pretrain.images


def pretrain_batch(params: dict[str, Any]) -> int:
    """pretrain.batch_size after the profile's overrides (the cpu profile overrides nothing today)."""
    pretrain = params["pretrain"]
    profile = (pretrain.get("profiles") or {}).get(pretrain.get("profile")) or {}
    return int(profile.get("batch_size", pretrain["batch_size"]))


def expected_epochs(images: int, batch: int, steps_per_epoch: int) -> int:
    """As sslops.ml.train.epochs_for: whole epochs closest to `images` images seen, at least one."""
    return max(1, round(images / batch / steps_per_epoch))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def headlines(evaluate: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`headline.<budget>.<key>` entries of evaluate.json as {budget: {key: value}} (budget keys hold dots:
    frac_0.01, so the key is what follows the last one)."""
    if isinstance(evaluate.get("headline"), dict):  # nested, should the stage ever write it so
        return evaluate["headline"]
    out: dict[str, dict[str, Any]] = {}
    for name, value in evaluate.items():
        if name.startswith("headline."):
            budget, key = name.removeprefix("headline.").rsplit(".", 1)
            out.setdefault(budget, {})[key] = value
    return dict(sorted(out.items(), key=lambda kv: kv[1].get("labels", 0)))


def run_schedule(root: Path, schedule: Schedule, batch: int, steps_per_epoch: int) -> dict[str, Any]:
    """One `dvc exp run` with this budget; what the pipeline wrote about it, and the run's wall time."""
    print(f"{schedule.label}: dvc exp run -S pretrain.images={schedule.images} ...", flush=True)
    log = root.parent / "logs" / f"exp-{schedule.name}.log"
    seconds, output = run(dvc("exp", "run", "-n", schedule.name, "-S", f"pretrain.images={schedule.images}"), root, log)
    applied = yaml.safe_load((root / "params.yaml").read_text())["pretrain"]["images"]
    if applied != schedule.images:
        raise RuntimeError(f"params.yaml holds pretrain.images={applied} after the run, not {schedule.images}")
    pretrain = read_json(root / "metrics" / "pretrain.json")
    evaluate = read_json(root / "metrics" / "tasks" / TASK / "evaluate.json")
    register = read_json(root / "metrics" / "register.json")
    epochs = expected_epochs(schedule.images, batch, steps_per_epoch)
    if (pretrain.get("epochs"), pretrain.get("steps")) != (epochs, epochs * steps_per_epoch):
        print(
            f"  note: expected {epochs} epochs / {epochs * steps_per_epoch} steps, metrics/pretrain.json has "
            f"{pretrain.get('epochs')} / {pretrain.get('steps')}",
            flush=True,
        )
    result = {
        "schedule": schedule.label,
        "experiment": schedule.name,
        "pretrain_images": schedule.images,
        "wall_s": round(seconds, 1),
        "min_steps_warning": "below pretrain.min_steps" in output,  # the pretrain stage's warning
        "pretrain": {
            k: pretrain.get(k)
            for k in ("epochs", "steps", "seconds", "train_seconds", "images_per_s", "loss", "knn_acc", "linear_acc")
        }
        | {"val_images": pretrain.get("val_images"), "amp": pretrain.get("amp"), "device": pretrain.get("device")},
        "model_version": register.get("version"),
        "evaluate_seconds": evaluate.get("seconds"),
        "headline": headlines(evaluate),
        "test_acc": {k.removeprefix("test.acc."): v for k, v in evaluate.items() if k.startswith("test.acc.")},
        "log": str(log),
    }
    p = result["pretrain"]
    print(
        f"  {seconds:.0f} s: {p['epochs']} epochs, {p['steps']} steps, kNN {pct(p['knn_acc'])}, "
        f"linear {pct(p['linear_acc'])}",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    """Where the figures were measured (wall times mean little without it, nor on a busy machine: load average)."""
    cpu = cpu_model()  # family, model and vector unit: "AMD EPYC" alone names both a Zen 3 and a Zen 5 here
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {}
    for package in ("torch", "dvc", "mlflow", "scikit-learn", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def load() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


def pct(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, int | float) else "–"


def markdown(results: dict[str, Any]) -> str:
    """Two tables: the pretraining each schedule got, then transfer on the 500 test images per label budget."""
    info, data = results["machine"], results["data"]
    intro = (
        f"Digits as a {SIDE} px RGB folder: {data['train']} labelled train, {data['unlabeled']} unlabeled, "
        f"{data['test']} test images; pretraining on {data['pretrain_images']} images = "
        f"{results['steps_per_epoch']} steps of {results['batch_size']} per epoch. "
        f"Machine: {info['cpu']}, {info['cpu_cores_usable']} of {info['cpu_cores']} cores usable, "
        f"load average {results['load_before']} before, {results['load_after']} after."
    )
    header = (
        "| schedule | pretrain.images | epochs | steps | pretrain time | run wall time | kNN (val) "
        "| linear probe (val) | below min_steps |"
    )
    lines = [intro, "", header, "|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        p = r["pretrain"]
        lines.append(
            f"| {r['schedule']} | {r['pretrain_images']:,} | {p['epochs']} | {p['steps']} "
            f"| {p['seconds'] or float('nan'):.0f} s | {r['wall_s']:.0f} s | {pct(p['knn_acc'])} "
            f"| {pct(p['linear_acc'])} | {'yes' if r['min_steps_warning'] else 'no'} |"
        )
    val = ", ".join(sorted({str(r["pretrain"]["val_images"]) for r in results["runs"]}))
    note = (
        f"kNN and linear probe: the pretrain stage's monitor, on {val} validation images carved from the labelled "
        f"train split. Below: accuracy on the {data['test']} test images, best protocol of each init."
    )
    lines += [
        "",
        note,
        "",
        "| schedule | labels | best pretrained | best scratch | raw pixels | gain vs scratch | gain vs pixels |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        for h in r["headline"].values():
            lines.append(
                f"| {r['schedule']} | {h.get('budget_name', '?')} ({h.get('labels', '?')}) "
                f"| {pct(h.get('best_pretrained'))} ({h.get('best_pretrained_protocol', '?')}) "
                f"| {pct(h.get('best_scratch'))} ({h.get('best_scratch_protocol', '?')}) "
                f"| {pct(h.get('best_pixels'))} "
                f"| {100 * h.get('gain_vs_best_scratch', float('nan')):+.1f} "
                f"| {100 * h.get('gain_vs_pixels', float('nan')):+.1f} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument(
        "--images",
        type=int,
        action="append",
        default=[],
        help="another pretrain.images budget to run after the old and default schedules (repeatable)",
    )
    parser.add_argument("--old-epochs", type=int, default=10, help="the old schedule's epochs (default 10)")
    parser.add_argument("--labelled-per-class", type=int, default=30, help="labelled train images per class")
    parser.add_argument("--workdir", type=Path, help="where the temporary project goes (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the project and <workdir>/logs/ afterwards")
    args = parser.parse_args()
    if any(n <= 0 for n in args.images) or args.old_epochs <= 0:
        parser.error("--images and --old-epochs must be positive")

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="small_dataset-")) if own_workdir else args.workdir.resolve()
    root = workdir / "project"
    if root.exists():
        parser.error(f"{root} already exists: choose another --workdir (nothing is overwritten)")
    results: dict[str, Any] = {"machine": machine(), "load_before": load()}
    print(
        f"machine: {results['machine']['cpu']}, {results['machine']['cpu_cores_usable']} of "
        f"{results['machine']['cpu_cores']} cores usable, load average {results['load_before']}",
        flush=True,
    )
    failed = True
    try:
        started = time.perf_counter()
        counts = make_project(root, args.labelled_per_class)
        params = yaml.safe_load((root / "params.yaml").read_text())
        batch = pretrain_batch(params)
        pretrain_images = counts["train"] + counts["unlabeled"]  # the augment stage's PRETRAIN_SPLITS
        steps_per_epoch = pretrain_images // batch
        if steps_per_epoch == 0:
            raise RuntimeError(f"pretrain.batch_size {batch} is larger than the {pretrain_images} pretraining images")
        default_images = int(params["pretrain"]["images"])
        results |= {
            "data": counts | {"pretrain_images": pretrain_images, "side": SIDE, "source": "sklearn load_digits"},
            "batch_size": batch,
            "steps_per_epoch": steps_per_epoch,
            "min_steps": params["pretrain"].get("min_steps"),
            "project": str(root),
        }
        print(
            f"project: {root} ({counts['train']} labelled train, {counts['unlabeled']} unlabeled, {counts['test']} "
            f"test; {steps_per_epoch} steps of {batch} per epoch) in {time.perf_counter() - started:.0f} s",
            flush=True,
        )

        # Stages no schedule changes, once and timed apart, so each schedule's wall time is its own stages only.
        seconds, _ = run(dvc("repro", "augment", f"task_validate@{TASK}"), root, workdir / "logs" / "setup.log")
        results["setup"] = {
            "wall_s": round(seconds, 1),
            "stages": ["prepare", "validate", "augment", f"task_prepare@{TASK}", f"task_validate@{TASK}"],
            "prepare": read_json(root / "metrics" / "prepare.json"),
            "augment": read_json(root / "metrics" / "augment.json"),
        }
        print(f"setup (prepare .. augment, task_prepare, task_validate): {seconds:.0f} s", flush=True)

        old = args.old_epochs * steps_per_epoch * batch
        schedules = [
            Schedule(f"old-{args.old_epochs}-epochs", f"old: {args.old_epochs} epochs", old),
            Schedule(f"default-{default_images}", "new default", default_images),
        ]
        for n in args.images:
            if n not in {s.images for s in schedules}:
                schedules.append(Schedule(f"images-{n}", f"--images {n:,}", n))
        results["runs"] = [run_schedule(root, s, batch, steps_per_epoch) for s in schedules]
        results["load_after"] = load()
        failed = False
    except RuntimeError as exc:
        raise SystemExit(f"{exc}\n(the project is kept: {root})") from None
    finally:
        if failed or args.keep:
            print(f"project kept: {root} (logs: {workdir / 'logs'})", flush=True)
        elif own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(workdir / "logs", ignore_errors=True)

    table = markdown(results)
    print("\n" + table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
