"""The prepare stage's decoding with 1 and 2 processes: images/s of `write_store` over a folder of JPEG files.

  .venv/bin/python bench/prepare_workers.py [--images 8192] [--size 96] [--rounds 2] [--json OUT]

Writes a seeded ImageFolder of RGB JPEGs (bench/large_images.py's synthetic photos, quality 90) once, plans it as
prepare does (`plan_dataset`: every header checked), then writes the store (`write_store`: decode, sha256, per-image
statistics, the memory-mapped array) with 1 and with 2 processes in interleaved rounds, keeping each one's best; the
two stores are compared byte for byte. Also the seconds of reading and decoding the files alone, in one process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sslops.data.formats import plan_dataset
from sslops.data.store import IMAGES, write_store
from sslops.ml.device import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32768)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from large_images import write_jpeg_folder  # here, not above: it imports torch, which a worker would import too

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "raw"
        write_jpeg_folder(root, args.images, 10, args.size, 90, seed=0)
        started = time.perf_counter()
        plan = plan_dataset("imagefolder", root, [], None, "unlabeled", 10**8)
        planned = time.perf_counter() - started
        started = time.perf_counter()
        for part in plan.parts:  # reading and decoding alone, in this process: what a worker saves per image
            part.load()
        loaded = time.perf_counter() - started
        best: dict[int, float] = {}
        stores = {}
        for _ in range(args.rounds):
            for workers in (1, 2):
                out = Path(tmp) / f"store-{workers}"
                out.mkdir(exist_ok=True)
                started = time.perf_counter()
                write_store(plan, out, progress=False, workers=workers)
                best[workers] = min(best.get(workers, float("inf")), time.perf_counter() - started)
                stores[workers] = (out / IMAGES).read_bytes()
        same = stores[1] == stores[2]
    rates = {w: round(plan.total / s) for w, s in best.items()}
    record = {
        "images": plan.total,
        "size": args.size,
        "plan_seconds": round(planned, 2),
        "load_seconds": round(loaded, 2),
        "seconds": {w: round(s, 2) for w, s in best.items()},
        "images_per_s": rates,
        "speedup": round(best[1] / best[2], 2),
        "identical_stores": same,
        "machine": cpu_model(),
    }
    print(json.dumps(record, indent=2))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
