"""Where a `make run` spends its time: every stage of `sslops repro` under cProfile, per stage and per phase.

Clones this repository's HEAD into COPY (the committed code and params; data/ is copied, not fetched), applies
`--set section.key=value` overrides to its params.yaml (`--set pretrain.amp=off --set finetune.amp=off` for the
fp32 path on a bf16 machine), has dvc.yaml run each stage under cProfile (`python -m sslops` becomes this script's
`--stage`), runs `sslops repro` there with `sslops estimate`'s table before it, and sums each stage's profile into
phases: imports, MLflow, Great Expectations, the pretraining loop and its monitor, fine-tuning loops, linear probes,
features, predictions, kNN, t-SNE, plots. cProfile adds a few per cent to Python-heavy phases.

Run: .venv/bin/python bench/profile_run.py COPY [--set pretrain.amp=off ...] [--json OUT.json]
     .venv/bin/python bench/profile_run.py --summarize OUT.json   (the markdown table of docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import runpy
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from ruamel.yaml import YAML

from sslops.adapters.provenance import dvc_stage
from sslops.ml.device import cpu_model

ROOT = Path(__file__).resolve().parents[1]
PROFILE_DIR = "SSLOPS_PROFILE_DIR"

# phase: does a profiled function (file, name) belong to it? A phase's time is the cumulative time of its outermost
# matching calls, so nested matches are not counted twice; phases may overlap one another (kNN inside the monitor).
PHASES: dict[str, Callable[[str, str], bool]] = {
    "imports": lambda f, n: n == "_find_and_load",
    "MLflow (tracking adapter)": lambda f, n: "adapters/tracking/" in f,
    "Great Expectations": lambda f, n: f.endswith("adapters/expectations.py") and n == "run_suites",
    "pretraining loop": lambda f, n: f.endswith("ml/train.py") and n == "train_one_epoch",
    "pretraining monitor": lambda f, n: f.endswith("stages/pretrain.py") and n == "on_epoch",
    "augmentation cache": lambda f, n: f.endswith("ml/cache.py") and n == "build_cache",
    "fine-tuning loops": lambda f, n: f.endswith("ml/transfer.py") and n == "finetune",
    "linear probes": lambda f, n: f.endswith("ml/transfer.py") and n == "fit_linear_probe",
    "features": lambda f, n: f.endswith("ml/transfer.py") and n == "features",
    "predictions": lambda f, n: f.endswith("ml/transfer.py") and n == "predict",
    "kNN": lambda f, n: f.endswith("ml/knn.py") and n == "knn_predict",
    "t-SNE": lambda f, n: n == "tsne_2d",
    "plots": lambda f, n: f.endswith("outputs/plots.py") and not n.startswith("_") and n != "tsne_2d",
}


def phases(profile: Path) -> dict[str, float]:
    """Seconds per phase in one stage's profile (phases under 0.05 s left out)."""
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    out = {}
    for phase, match in PHASES.items():
        seconds = sum(
            cumulative
            for (file, _, name), (_, _, _, cumulative, callers) in stats.items()
            if match(file, name) and not any(match(cf, cn) for (cf, _, cn) in callers)
        )
        if seconds >= 0.05:
            out[phase] = round(seconds, 1)
    return out


def stage(args: list[str]) -> None:
    """Run `python -m sslops ARGS` under cProfile; its profile and wall time go to $SSLOPS_PROFILE_DIR."""
    name = dvc_stage(args[0], args[args.index("--task") + 1] if "--task" in args else None)
    out = Path(os.environ[PROFILE_DIR])
    sys.argv = ["sslops", *args]
    profile, started = cProfile.Profile(), time.perf_counter()
    profile.enable()
    try:
        runpy.run_module("sslops", run_name="__main__", alter_sys=True)
    finally:
        profile.disable()
        profile.dump_stats(out / f"{name}.prof")
        (out / f"{name}.wall").write_text(f"{time.perf_counter() - started:.1f}\n")


def run(copy: Path, overrides: list[str]) -> dict:
    """Clone, override, profile every stage of `sslops repro`; the stages' wall times and phases."""
    if copy.exists():
        raise SystemExit(f"{copy} exists: name a new folder")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(copy)], check=True)
    shutil.copytree(ROOT / "data", copy / "data")
    params = yaml.safe_load((copy / "params.yaml").read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        section = params
        for part in path:
            section = section[part]
        section[last] = YAML(typ="safe").load(value)  # YAML 1.2, as `dvc exp run -S`: `off` stays a string
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    wrapped = f"python {copy / 'bench' / 'profile_run.py'} --stage"
    (copy / "dvc.yaml").write_text((copy / "dvc.yaml").read_text().replace("python -m sslops", wrapped))
    out = copy / "profile"
    out.mkdir()
    env = {**os.environ, PROFILE_DIR: str(out), "PYTHONPATH": str(copy / "src")}
    subprocess.run([sys.executable, "-m", "sslops", "estimate", "--all"], cwd=copy, env=env, check=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sslops", "repro"], cwd=copy, env=env, check=True)
    total = time.perf_counter() - started
    stages = {
        wall.stem: {"wall": float(wall.read_text()), "phases": phases(wall.with_suffix(".prof"))}
        for wall in sorted(out.glob("*.wall"), key=lambda p: p.stat().st_mtime)
    }
    return {"machine": cpu_model(), "overrides": overrides, "repro_seconds": round(total, 1), "stages": stages}


def markdown(record: dict) -> str:
    """One row per stage: its wall time and its phases, largest first."""
    lines = ["| stage | seconds | where they go (seconds) |", "|---|---:|---|"]
    for name, s in record["stages"].items():
        parts = ", ".join(f"{p} {v:g}" for p, v in sorted(s["phases"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {name} | {s['wall']:.1f} | {parts} |")
    lines.append(f"| **`sslops repro`** | **{record['repro_seconds']:.1f}** | stages and DVC |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--stage"]:
        stage(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("copy", nargs="?", type=Path, help="a new folder to clone into and run in")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml override")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--summarize", type=Path, metavar="JSON", help="print the table of an earlier run")
    args = parser.parse_args()
    if args.summarize:
        print(markdown(json.loads(args.summarize.read_text())))
        return
    if args.copy is None:
        parser.error("name a folder to run in (or --summarize JSON)")
    record = run(args.copy.resolve(), args.set)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(record))


if __name__ == "__main__":
    main()
