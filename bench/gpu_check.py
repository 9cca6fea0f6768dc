"""The GPU path through the real stages, in one command for a GPU machine without network: `make gpu-check`.

  python bench/gpu_check.py [--out DIR]            # on the GPU machine (about 8 minutes on one H100)
  python bench/gpu_check.py --tiny --device cpu    # the same steps at a CPU's size: what the tests run

1. A project in a temporary folder: this checkout's dvc.yaml and params.yaml with the `gpu` profile (ResNet-18,
   bf16) and a short pretraining budget, over a generated folder of photos (JPEG and PNG, 200 to 300 px, 4 classes
   and an unlabeled folder) at `prepare.resize.side: 224`, so both stores are JPEG and pretraining decodes them in
   loader workers (nvJPEG on CUDA). The folder is also the one downstream task.
2. Every stage: `dvc repro` where DVC imports (it needs a git repository: one is made), else `python -m sslops
   STAGE` in dvc.yaml's order, and the summary says which ran.
3. The loop benchmark on the device (bench/large_images.py at 224 px): the JPEG store loop against the model step
   alone and against torchvision's ImageFolder DataLoader; on CUDA with ResNet-50 in bf16, 8 and 16 decode workers
   against 16 DataLoader workers. Targets: the store loop >= 0.95x the model step and >= 2x the torchvision loop.

Writes DIR/summary.json (machine, stages and their seconds, the loop's figures, each target met or not) and
DIR/loop.json; exits 1 when a stage fails, not when a target is missed (a figure is a finding, not a crash).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["prepare", "validate", "augment", "pretrain", "register"]
TASK_STAGES = ["prepare", "validate", "finetune", "evaluate"]
TASK = "photos"
CLASSES = [f"class{k}" for k in range(4)]


def write_photos(root: Path, per_class: int, seed: int = 0) -> None:
    """Photo-like images (random colours upsampled, JPEG and PNG, 200 to 300 px, either orientation)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", max(2, per_class // 4)), ("unlabeled", per_class // 2)):
        for k in range(4 * count):
            height, width = (int(v) for v in rng.integers(200, 301, size=2))
            small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
            folder = root / split if split == "unlabeled" else root / split / CLASSES[k % 4]
            folder.mkdir(parents=True, exist_ok=True)
            if k % 3:
                img.save(folder / f"{k}.jpg", quality=90)
            else:
                img.save(folder / f"{k}.png")


def make_project(root: Path, tiny: bool, device: str) -> None:
    """The project: this checkout's pipeline and code (dvc.yaml names src/ files as deps), params, photos."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "vendor/datadocs/package-lock.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(
        format="imagefolder", root=f"data/{TASK}", classes=CLASSES, resize={"side": 224, "mode": "crop"}
    )
    params["validate"].update(min_rows=10, min_class_share=0.1)
    params["tasks"] = {
        TASK: {
            "kind": "classification",
            "format": "imagefolder",
            "root": f"data/{TASK}",
            "classes": CLASSES,
            "budgets": [1.0],
        }
    }
    pretrain = params["pretrain"]
    pretrain.update(device=device, min_steps=1)
    if tiny:  # seconds on a CPU: the CPU profile's small_cnn at its smallest
        pretrain["backbone"] = {"name": "small_cnn", "width": 4, "stem_width": None, "pool": 1, "small_stem": True}
        pretrain.update(images=64, batch_size=16, decode_workers=1)
        params["finetune"]["recipe"].update(epochs=1, max_steps=2, batch_size=16)
        params["finetune"]["search"]["auto"] = ["base"]  # one recipe: the search's plumbing, not its choice
    else:
        pretrain.update(profile="gpu")
        pretrain["profiles"]["gpu"].update(images=20_000)  # 25 epochs of the folder: a minute, not hours
    params["finetune"]["device"] = device
    params["finetune"]["chosen"] = {}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_photos(root / "data" / TASK, per_class=8 if tiny else 200)


def run(cmd: list[str], root: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"gpu-check: `{' '.join(cmd)}` failed (exit {done.returncode})")
    return round(time.perf_counter() - started, 1)


def stages(root: Path, env: dict[str, str]) -> dict[str, object]:
    """Every stage of the project, through `dvc repro` when DVC is there, else one `python -m sslops` each."""
    if importlib.util.find_spec("dvc") is not None:
        for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"]):
            run(cmd, root, env)
        run(["git", "commit", "-qm", "gpu-check project"], root, env)
        return {"runner": "dvc repro", "seconds": {"dvc repro": run([sys.executable, "-m", "dvc", "repro"], root, env)}}
    seconds = {stage: run([sys.executable, "-m", "sslops", stage], root, env) for stage in STAGES}
    for stage in TASK_STAGES:
        seconds[f"{stage}@{TASK}"] = run([sys.executable, "-m", "sslops", stage, "--task", TASK], root, env)
    return {"runner": "python -m sslops (DVC is not installed)", "seconds": seconds}


def loop(out: Path, tiny: bool, device: str, env: dict[str, str]) -> dict[str, object]:
    if tiny:
        size = ["--images", "32", "--batch", "8", "--steps", "1", "--warmup", "1", "--backbone", "small_cnn"]
        size += ["--workers", "0", "--store-workers", "1"]
    else:
        size = ["--images", "8192", "--batch", "256", "--steps", "20", "--warmup", "5", "--backbone", "resnet50"]
        size += ["--workers", "16", "--store-workers", "8,16"]
    cmd = [sys.executable, str(ROOT / "bench" / "large_images.py"), "--size", "224", "--device", device]
    cmd += ["--amp", "bf16" if device.startswith("cuda") else "auto", "--rounds", "1" if tiny else "2"]
    run([*cmd, *size, "--json", str(out / "loop.json")], ROOT, env)
    figures = json.loads((out / "loop.json").read_text())
    rates = figures["images_per_s"]
    store = max((k for k in rates if k.startswith("jpeg_store_")), key=rates.get)
    torchvision = max((k for k in rates if k.startswith("torchvision_")), key=rates.get)
    return {
        "images_per_s": rates,
        "store_over_model_step": round(rates[store] / rates["model"], 3),
        "store_over_torchvision": round(rates[store] / rates[torchvision], 3),
        "targets": {
            "store >= 0.95x model step": rates[store] >= 0.95 * rates["model"],
            "store >= 2x torchvision": rates[store] >= 2 * rates[torchvision],
        },
        "machine": figures["machine"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a CPU-sized run: what the tests run")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "gpu-check")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env |= {"DVC_NO_ANALYTICS": "1", "TQDM_DISABLE": "1", "GIT_AUTHOR_NAME": "gpu-check", "GIT_COMMITTER_NAME": "gpu"}
    env |= {"GIT_AUTHOR_EMAIL": "gpu-check@sslops.invalid", "GIT_COMMITTER_EMAIL": "gpu-check@sslops.invalid"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # dvc.yaml's `python` is this one
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        project = Path(tmp) / "project"
        make_project(project, args.tiny, args.device)
        summary: dict[str, object] = {"device": args.device, "tiny": args.tiny}
        summary["stages"] = stages(project, {**env, "SSLOPS_ROOT": str(project)})
        metrics = project / "metrics"
        summary["prepare"] = json.loads((metrics / "prepare.json").read_text())
        summary["pretrain"] = json.loads((metrics / "pretrain.json").read_text())
        summary["evaluate"] = json.loads((metrics / "tasks" / TASK / "evaluate.json").read_text())
    summary["loop"] = loop(args.out, args.tiny, args.device, env)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("stages", "loop", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
