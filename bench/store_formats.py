"""Which store is cheaper at which size: raw uint8 against JPEG (and PNG), in bytes and in decode time per core.

  .venv/bin/python bench/store_formats.py [--images 2048] [--sizes 28,48,64,96,224] [--quality 90] [--json F]

For 28 px grayscale (Fashion-MNIST's own training images, read from data/fashion-mnist) and RGB at the other sizes
(bench/large_images.py's seeded synthetic photos), each image is kept three ways: raw uint8 (what the memory-mapped
store holds), JPEG at --quality and PNG (lossless). Reported per size and format: bytes per image, the images/s one
core reads them back at into a uint8 batch (raw: a sorted gather from the memory map, as pretraining reads the
store; JPEG: Pillow and torchvision.io's libjpeg-turbo decoders; PNG: Pillow), and for JPEG the pixel error
(PSNR, dB). Best of --rounds interleaved rounds, one thread (a DataLoader worker decodes on one core).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import decode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large_images import synthetic_image  # noqa: E402  (a script beside this one)

from sslops.data.idx import plan_idx  # noqa: E402
from sslops.ml.device import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fashion_mnist(n: int) -> np.ndarray:
    """The first `n` training images of Fashion-MNIST as (n, 28, 28, 1) uint8."""
    plan = plan_idx(ROOT / "data" / "fashion-mnist", [])
    train = next(p for p in plan.parts if p.split == "train")
    return train.load()[:n]


def synthetic(n: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    palettes = rng.uniform(0, 255, (10, 3, 3))
    return np.stack([synthetic_image(rng, size, palettes[i % 10]) for i in range(n)])


def encode(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {"compress_level": 6}))
    return buf.getvalue()


def pil_decode(blobs: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty((len(blobs), *shape), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        with Image.open(io.BytesIO(blob)) as img:
            out[i] = np.asarray(img).reshape(shape)
    return out


def tv_decode(blobs: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty((len(blobs), *shape), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        out[i] = decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8)).permute(1, 2, 0).numpy()
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return round(10 * np.log10(255.0**2 / mse), 2) if mse else float("inf")


def measure(images: np.ndarray, quality: int, rounds: int) -> dict[str, object]:
    n, shape = len(images), images.shape[1:]
    jpeg = [encode(img, "JPEG", quality) for img in images]
    png = [encode(img, "PNG", quality) for img in images]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.npy"
        np.save(path, images)
        store = np.load(path, mmap_mode="r")
        order = np.random.default_rng(1).permutation(n)
        readers = {
            "raw": lambda: [np.asarray(store[np.sort(order[s : s + 256])]) for s in range(0, n, 256)],
            "jpeg_pillow": lambda: pil_decode(jpeg, shape),
            "jpeg_torchvision": lambda: tv_decode(jpeg, shape),
            "png_pillow": lambda: pil_decode(png, shape),
        }
        best = dict.fromkeys(readers, float("inf"))
        for _ in range(rounds):
            for name, read in readers.items():
                started = time.perf_counter()
                read()
                best[name] = min(best[name], time.perf_counter() - started)
    return {
        "shape": list(shape),
        "bytes_per_image": {
            "raw": int(np.prod(shape)),
            "jpeg": round(sum(map(len, jpeg)) / n),
            "png": round(sum(map(len, png)) / n),
        },
        "images_per_s_one_core": {name: round(n / s) for name, s in best.items()},
        "jpeg_psnr_db": psnr(images, tv_decode(jpeg, shape)),
        "pillow_equals_torchvision": bool(np.array_equal(pil_decode(jpeg, shape), tv_decode(jpeg, shape))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="28,48,64,96,224", help="28: Fashion-MNIST (gray); others: RGB photos")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    sets = {
        f"{s}px_gray" if s == 28 else f"{s}px_rgb": fashion_mnist(args.images) if s == 28 else synthetic(args.images, s)
        for s in sizes
    }
    record = {
        "images": args.images,
        "quality": args.quality,
        "sizes": {name: measure(images, args.quality, args.rounds) for name, images in sets.items()},
        "machine": cpu_model(),
        "threads": 1,
    }
    print(json.dumps(record, indent=2))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
