"""The data stages at scale: seconds, images/s, peak memory and bytes for N photos, with 1 and 2 processes.

  .venv/bin/python bench/data_scale.py --images 1000000 --size 96 --work /scratch --json OUT
  .venv/bin/python bench/data_scale.py --images 200000 --size 224 --work /scratch --json OUT

Writes N RGB JPEG files of --size px (quality 90) into an ImageFolder once, deterministically: 4,096 of
bench/large_images.py's synthetic photos, each file one of them with five 8x8 blocks spelling its number (so no two
files decode alike: validation refuses duplicates); 10 classes, 90 % of each in train, 10 % in test. Then, for 10 %,
50 % and 100 % of the files (hard links into a project of their own), runs the prepare, validate and augment stages as
`python -m sslops` processes (prepare with `workers` 1 and, at 100 %, 2; the default store, a JPEG store from
64 px) and records each stage's seconds, images/s and peak RSS (the stage process's own), and the bytes of the
store against the JPEG files and against raw uint8.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large_images import synthetic_image  # noqa: E402

from sslops.ml.device import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASES = 4096
# Runs one stage in this interpreter and prints its peak RSS: VmHWM, this process's own (ru_maxrss reports at least
# the parent's size at fork, and so would a decoding process's; those hold one part at a time, by design).
PEAK = (
    "import re, sys; from sslops.cli import main; code = main(sys.argv[1:]); "
    "print('peak_kb', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(code)"
)


@cache
def _bases(size: int) -> np.ndarray:
    """The 4,096 synthetic photos every file is one of (computed once per process)."""
    rng = np.random.default_rng(0)
    palettes = rng.uniform(0, 255, (10, 3, 3))
    return np.stack([synthetic_image(rng, size, palettes[i % 10]) for i in range(BASES)])


def _write(job: tuple[Path, int, int, int]) -> None:
    """Files start..stop-1 (one process's share)."""
    root, size, start, stop = job
    bases = _bases(size)
    for i in range(start, stop):
        pixels = bases[i % BASES].copy()
        for b in range(5):  # five hex digits of i, in steps of 16 that JPEG keeps
            pixels[:8, 8 * b : 8 * b + 8] = (i >> (4 * b)) % 16 * 16
        split = "test" if (i // 10) % 10 == 0 else "train"  # 10 % of every class
        Image.fromarray(pixels).save(root / split / f"c{i % 10}" / f"{i:07d}.jpg", quality=90)


def write_photos(root: Path, n: int, size: int) -> float:
    """The ImageFolder of n files (kept when complete); seconds it took."""
    done = root / f".complete-{n}-{size}"
    if done.is_file():
        return 0.0
    started = time.perf_counter()
    for split in ("train", "test"):
        for k in range(10):
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
    step = 50_000
    jobs = [(root, size, s, min(n, s + step)) for s in range(0, n, step)]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.map(_write, jobs)
    done.touch()
    return time.perf_counter() - started


def project(work: Path, photos: Path, n: int, total: int) -> Path:
    """A project holding the first n files of `photos` (hard links: regular files, as the reader requires)."""
    root = work / f"project-{n}"
    if root.exists():
        shutil.rmtree(root)
    data = root / "data" / "photos"
    for path in sorted(photos.rglob("*.jpg")):
        if int(path.stem) < n:
            target = data / path.relative_to(photos)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    (root / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(format="imagefolder", root="data/photos", classes=[f"c{k}" for k in range(10)])
    params["validate"].update(max_rows=10 * total)
    params["tasks"] = {}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def run_stage(root: Path, stage: str) -> dict[str, float]:
    env = {**os.environ, "SSLOPS_ROOT": str(root), "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, stage], cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{stage} failed in {root}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    own = int(done.stdout.split("peak_kb")[-1].split()[0])
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(own / 1024)}


def set_workers(root: Path, workers: int) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["prepare"]["workers"] = workers
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--fractions", default="0.1,0.5,1.0")
    parser.add_argument("--workers", default="1,2", help="prepare.workers tried at 100 %% (below: 1)")
    parser.add_argument("--work", type=Path, required=True, help="a folder with room for the files and stores")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    photos = args.work / f"photos-{args.size}px"
    generated = write_photos(photos, args.images, args.size)
    files = sorted(photos.rglob("*.jpg"))
    record: dict = {
        "images": args.images,
        "size": args.size,
        "generate_seconds": round(generated, 1),
        "jpeg_bytes": sum(p.stat().st_size for p in files),
        "raw_bytes": args.images * args.size * args.size * 3,
        "machine": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "runs": [],
    }
    del files
    for fraction in (float(f) for f in args.fractions.split(",")):
        n = round(args.images * fraction)
        root = project(args.work, photos, n, args.images)
        for workers in [int(w) for w in args.workers.split(",")] if fraction == 1.0 else [1]:
            set_workers(root, workers)
            run = {"images": n, "workers": workers}
            for stage in ("prepare", "validate", "augment"):
                run[stage] = run_stage(root, stage)
                run[stage]["images_per_s"] = round(n / run[stage]["seconds"])
                print(n, workers, stage, run[stage], flush=True)
            prepared = root / "artifacts" / "prepared"
            run["store_bytes"] = sum(p.stat().st_size for p in prepared.rglob("*") if p.is_file())
            run["store"] = json.loads((root / "metrics" / "prepare.json").read_text())["store"]
            record["runs"].append(run)
        shutil.rmtree(root)
    print(json.dumps(record, indent=2))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
