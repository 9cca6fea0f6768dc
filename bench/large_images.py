"""Throughput at real sizes: 96x96 RGB JPEG files, images/s (1 image = 2 views) through the real SimCLR loop.

Fashion-MNIST's 28x28x1 hides what a real image costs: decoding a JPEG, 12x the pixels per view in 3 channels,
and a cache of augmented views that no longer fits in a few hundred megabytes. This benchmark writes an
ImageFolder of JPEG files at 96x96 px (STL-10's size; seeded synthetic content that compresses like photos:
smooth colour gradients and blobs, a few hard edges, texture, sensor noise) and measures, all through
`sslops.ml.train.pretrain` (SimCLR head on an Encoder, LARS, channels_last, AMP per --amp; ResNet-18 with the
standard ImageNet stem by default):

  model         the model step alone on ready tensors already on the device: the ceiling of every loop
  cache         the pipeline's loop: the JPEGs decoded once into a uint8 NHWC store (as prepare does), K augmented
                views per image written by `build_cache` (as the augment stage does), batches read with
                `cached_pairs` (as pretrain does)
  cache+prefetch  CUDA only: the same reads gathered and pinned in a background thread, copied host-to-device
                with non-blocking copies on a side CUDA stream while the previous step runs
  on-the-fly    the pipeline's loop without a cache: `BatchAugment` on the device over the decoded store
  jpeg-store    the pipeline's loop for photos: the prepare stage's JPEG store of the same files (their bytes kept),
                each batch decoded by `JpegStream`'s loader workers (--store-workers), `BatchAugment` on the device
  torchvision   the loop users would otherwise write: torchvision ImageFolder over the JPEG files, per-sample
                transforms.v2 (the same recipe: RandomResizedCrop scale 0.2-1, flip, ColorJitter(0.4, 0.4, 0.4,
                0.1) p=0.8, RandomGrayscale 0.2), two views per image, a DataLoader decoding the files every
                epoch, for each num_workers in --workers (pin_memory on CUDA)

All loops run in --rounds interleaved rounds (a shared machine drifts; drift must not pick the winner), each
measurement a fresh model, --warmup steps, then --steps timed steps; the best of each loop is kept. Epochs are
chained, so --steps may exceed the images per epoch. Reported: images/s per loop and its ratio to the model
step (on CUDA the cache+prefetch target is >= 0.98), bytes on disk of the JPEG folder, the store and the cache,
the one-off seconds to decode and to build the cache, and the machine.

Run (CPU; ResNet-18 at 96 px takes seconds per step on 2 cores, so small_cnn is the quick variant):
  .venv/bin/python bench/large_images.py --json /tmp/large_images_cpu.json
  .venv/bin/python bench/large_images.py --backbone small_cnn --json /tmp/large_images_cpu_small.json
On a GPU (more images, so an epoch holds 32 steps of the larger batch):
  python bench/large_images.py --device cuda --amp bf16 --images 8192 --batch 256 --workers 0,4,8 --json gpu.json
Smoke test: --images 64 --batch 16 --steps 2 --warmup 1 --rounds 1 --workers 0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from pretrain_throughput import ROOT, augment_recipe, default_params

from sslops.config import Project
from sslops.config.validation import method_knobs
from sslops.data import images as image_files
from sslops.data.encoded import Codec, EncodedImages
from sslops.data.formats import plan_dataset
from sslops.data.resize import Fit, fit_image
from sslops.data.store import write_store
from sslops.ml.augment import AugmentConfig, BatchAugment
from sslops.ml.cache import build_cache
from sslops.ml.device import amp_name, cpu_has_native_bf16, cpu_model, pick_device
from sslops.ml.methods import METHOD_CONFIGS, SimCLR
from sslops.ml.models import BACKBONES, BackboneConfig, Encoder
from sslops.ml.train import TrainConfig, pretrain
from sslops.ml.views import JpegStream, ViewCache, cached_pairs, on_the_fly_pairs

Pair = tuple[torch.Tensor, torch.Tensor]
Stream = Callable[[int], Iterator[Pair]]  # first epoch -> an endless iterator of (view1, view2) batches

# params.yaml's augmentation recipe (`augment:`, SimCLR's), SimCLR head and image size limit: what `make run` uses.
# Both the pipeline's BatchAugment and the torchvision loop are built from RECIPE, so they run the same
# augmentation (the torchvision side has no blur or rotation: params.yaml's blur_p and rotation are 0).
_PARAMS, _AUGMENT = default_params()
RECIPE = augment_recipe(_AUGMENT)
HEAD = method_knobs(_PARAMS, METHOD_CONFIGS, "simclr")
MAX_PIXELS = Project(ROOT).config("prepare").max_pixels  # the reader refuses larger files before decoding


# ---------------------------------------------------------------------------------------------------- the data


def texture(rng: np.random.Generator, size: int, cells: int, amplitude: float) -> np.ndarray:
    """A (size, size) field of Gaussian values on a cells x cells grid, bicubically upsampled: texture at one scale."""
    from PIL import Image

    field = rng.normal(0, amplitude, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(field, "F").resize((size, size), Image.BICUBIC))


def synthetic_image(rng: np.random.Generator, size: int, palette: np.ndarray) -> np.ndarray:
    """One uint8 (size, size, 3) image that JPEG compresses like a photo rather than like noise or a flat card.

    A smooth gradient between two of the class's colours, soft blobs (out-of-focus objects), one or two
    hard-edged ellipses (object boundaries: the high frequencies JPEG pays for), band-limited luminance texture
    (surfaces) and Gaussian sensor noise: about 3.5 KiB per 96x96 file at quality 90.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    c0, c1 = (np.clip(palette[i] + rng.normal(0, 25, 3), 0, 255) for i in (0, 1))
    img = c0 + (c1 - c0) * t[..., None]
    for _ in range(rng.integers(3, 9)):
        cx, cy = rng.uniform(0, 1, 2)
        rx, ry = rng.uniform(0.04, 0.25, 2)
        weight = rng.uniform(0.5, 1.0) * np.exp(-0.5 * (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))
        img += (rng.uniform(0, 255, 3) - img) * weight[..., None]
    for _ in range(rng.integers(1, 3)):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        rx, ry = rng.uniform(0.08, 0.3, 2)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        img[inside] = 0.3 * img[inside] + 0.7 * np.clip(palette[2] + rng.normal(0, 30, 3), 0, 255)
    img += (texture(rng, size, size // 4, 14.0) + texture(rng, size, size // 2, 8.0))[..., None]
    img += rng.normal(0, 4.0, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def write_jpeg_folder(root: Path, n: int, classes: int, size: int, quality: int, seed: int) -> None:
    """`root/train/class_<k>/<i>.jpg`: n images, classes of equal size, each class with its own colour palette."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palettes = rng.uniform(0, 255, (classes, 3, 3))  # per class: two gradient colours and an object colour
    for k in range(classes):
        (root / "train" / f"class_{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = i % classes
        pixels = synthetic_image(rng, size, palettes[k])
        Image.fromarray(pixels, "RGB").save(root / "train" / f"class_{k}" / f"{i:06d}.jpg", quality=quality)


def image_paths(root: Path) -> list[Path]:
    """The image files of the ImageFolder's train split, in a stable order (class folder, then name)."""
    return sorted(p for p in (root / "train").glob("*/*") if p.suffix.lower() in image_files.IMAGE_SUFFIXES)


def disk_bytes(paths: list[Path]) -> dict[str, int]:
    """Bytes of `paths`: `files` (their sizes) and `allocated` (filesystem blocks: small JPEGs round up to 4 KiB)."""
    stats = [p.stat() for p in paths]
    return {"files": sum(s.st_size for s in stats), "allocated": sum(s.st_blocks * 512 for s in stats)}


def decode_store(paths: list[Path], out: Path, size: int) -> np.ndarray:
    """Decode every file once into a memory-mapped uint8 (N, size, size, 3) .npy, with prepare's reader and resize
    rules (`sslops.data.images.read`, `sslops.data.resize.fit_image`: the files are written at `size` already), and
    return it opened read-only as the pipeline's stages open the store."""
    store = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    fit = Fit(size, size, 3, "crop")
    for i, path in enumerate(paths):
        store[i] = fit_image(image_files.read(path, 3, MAX_PIXELS), fit)
    store.flush()
    del store
    return np.load(out, mmap_mode="r")


# ---------------------------------------------------------------------------------------------------- the loops


def endless(epoch_batches: Callable[[int], Iterator[Pair]]) -> Stream:
    """Chain epochs: a measurement of more steps than one epoch holds crosses epoch boundaries, as training does."""

    def stream(start: int) -> Iterator[Pair]:
        for epoch in itertools.count(start):
            yield from epoch_batches(epoch)

    return stream


_END = object()


def cuda_prefetched(pairs: Iterator[Pair], device: torch.device, depth: int = 2) -> Iterator[Pair]:
    """`pairs` moved to `device` ahead of use, so the step never waits on the host or on a copy.

    A background thread gathers batches from the cache and copies them into pinned host memory (numpy's gather
    and torch's copy release the GIL, so this overlaps the step's kernel launches); the main thread queues
    batch i+1's host-to-device copy on a side stream before handing out batch i, so the copy runs while step i
    computes. The compute stream waits for a batch's copy by an event, and `record_stream` keeps the caching
    allocator from reusing its memory while the step still reads it.
    """
    host: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                host.put(item, timeout=0.1)
                return True
        return False

    def produce() -> None:
        try:
            for pair in pairs:
                if not put(tuple(t.pin_memory() for t in pair)):
                    return
            put(_END)
        except Exception as exc:  # handed to the consumer, which re-raises it in the training loop
            put(exc)

    side, compute = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def upload() -> tuple[Pair, torch.cuda.Event] | None:
        item = host.get()
        if item is _END:
            return None
        if isinstance(item, Exception):
            raise item
        with torch.cuda.stream(side):
            pair = tuple(t.to(device, non_blocking=True) for t in item)
            copied = torch.cuda.Event()
            copied.record(side)
        return pair, copied

    thread = threading.Thread(target=produce, name="cache-prefetch", daemon=True)
    thread.start()
    try:
        upcoming = upload()
        while upcoming is not None:
            pair, copied = upcoming
            upcoming = upload()  # batch i+1's copy is queued before step i: it overlaps step i's compute
            compute.wait_event(copied)
            for t in pair:
                t.record_stream(compute)
            yield pair
    finally:
        stop.set()
        thread.join()


class TwoViews:
    """A per-sample transform applied twice: the two independently augmented views SimCLR needs."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: object) -> Pair:
        return self.transform(image), self.transform(image)


def torchvision_transform(cfg: AugmentConfig, size: int) -> Callable:
    """`cfg` as the per-sample torchvision.transforms.v2 pipeline a user would write (on the decoded PIL image),
    ending in a uint8 CHW tensor: the Encoder takes raw 0..255 pixels, as it does from the cache."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
            v2.RandomHorizontalFlip(cfg.flip_p),
            v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
            v2.RandomGrayscale(cfg.grayscale_p),
            v2.ToImage(),
            v2.ToDtype(torch.uint8, scale=True),
        ]
    )


@contextlib.contextmanager
def torchvision_loop(root: Path, size: int, batch: int, workers: int, pin: bool) -> Iterator[Stream]:
    """ImageFolder over the JPEG files + per-sample v2 views in a DataLoader that decodes every file each epoch.

    One loader per measurement: its workers persist across the warm-up and timed epochs (as in a real run) and
    end with the measurement, so they do not hold memory or prefetch during the other loops' measurements.
    """
    from torchvision.datasets import ImageFolder

    loader = torch.utils.data.DataLoader(
        ImageFolder(str(root / "train"), transform=TwoViews(torchvision_transform(RECIPE, size))),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(0),
    )

    held = [loader]  # emptied on exit: the last reference goes, and with it the persistent workers

    def epoch_batches(epoch: int) -> Iterator[Pair]:
        for (v1, v2), _labels in held[0]:
            yield v1, v2

    try:
        yield endless(epoch_batches)
    finally:
        held.clear()


# ---------------------------------------------------------------------------------------------------- measuring


@dataclasses.dataclass(frozen=True)
class Run:
    """What every measurement shares: the images' shape, the network, the step's settings."""

    shape: tuple[int, int, int]  # H, W, C
    backbone: BackboneConfig
    batch: int
    steps: int
    warmup: int
    device: torch.device
    amp: str  # resolved: bf16 | fp16 | off
    train: TrainConfig


def backbone_config(name: str) -> BackboneConfig:
    """ResNets with the standard ImageNet stem (7x7 stride-2 conv + max-pool): 96 px is large enough, and the
    small stem would make the step ~16x dearer. small_cnn with params.yaml's CPU-profile sizes."""
    if name == "small_cnn":
        return BackboneConfig(name=name, in_channels=3, width=32, small_stem=True, pool=2, stem_width=16)
    return BackboneConfig(name=name, in_channels=3, width=32, small_stem=False, pool=1, stem_width=None)


def train_config(batch: int, amp: str) -> TrainConfig:
    """One epoch of the real loop, no LR warm-up, LARS as the pipeline, channels_last (base_lr 0.3 as
    pretrain_throughput.py: the LR does not change the cost). Filled by field name and checked, because
    TrainConfig is being reworked: a field this benchmark does not know stops it with its name before the data
    is generated, rather than a TypeError after it."""
    values = {
        "epochs": 1,
        "batch_size": batch,
        "optimizer": "lars",
        "base_lr": 0.3,
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "warmup_epochs": 0,
        "final_lr_fraction": 0.0,
        "amp": amp,
        "channels_last": True,
        "compile": False,
        "seed": 0,
    }
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = [
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if unknown:
        raise SystemExit(f"TrainConfig has fields this benchmark does not set: {unknown}; update train_config().")
    return TrainConfig(**{k: v for k, v in values.items() if k in fields})


def make_method(run: Run, seed: int = 0) -> SimCLR:
    """A fresh SimCLR on a fresh Encoder (the normalisation constants do not change the cost)."""
    torch.manual_seed(seed)
    h, w, c = run.shape
    encoder = Encoder(run.backbone, [0.45] * c, [0.25] * c)
    return SimCLR(encoder, (c, h, w), HEAD)


def measure(run: Run, label: str, stream: Stream) -> float:
    """images/s of `run.steps` training steps of a fresh model through sslops.ml.train.pretrain, after
    `run.warmup` untimed steps (allocator, cuDNN/oneDNN kernel choice, DataLoader workers starting)."""
    method, cfg = make_method(run), run.train
    with tempfile.TemporaryDirectory() as tmp:
        if run.warmup:
            warm = itertools.islice(stream(0), run.warmup)
            pretrain(method, lambda e: warm, run.warmup, cfg, run.device, Path(tmp) / "w.pt", "w", progress=False)
        timed = itertools.islice(stream(1), run.steps)
        history = pretrain(method, lambda e: timed, run.steps, cfg, run.device, Path(tmp) / "m.pt", "m", progress=False)
    rate = history[-1].images_per_s
    print(f"  {label:<62} {rate:9.1f} img/s", flush=True)
    return rate


def machine(device: torch.device, amp: str) -> dict[str, object]:
    """Where the figures were measured: they mean little without it."""
    import torchvision

    cpu = cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "amp": amp,
    }


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="JPEG files to generate")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=96, help="image side in px")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the generated files")
    parser.add_argument(
        "--data", type=Path, help="ImageFolder root to use: reused when it has train/<class>/ files, else generated"
    )
    parser.add_argument("--scratch", type=Path, help="where the store and the cache go (default: system temp)")
    parser.add_argument("--views", type=int, default=2, help="K cached views per image (>= 2)")
    parser.add_argument("--backbone", default="resnet18", choices=BACKBONES)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps | auto")
    parser.add_argument("--amp", default="auto", help="auto | bf16 | fp16 | off (auto: as sslops.ml.device)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every loop; best is kept")
    parser.add_argument("--workers", default="0,1", help="DataLoader num_workers tried for the torchvision loop")
    parser.add_argument("--store-workers", default="1,2", help="decode workers tried for the JPEG store loop")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.views < 2:
        parser.error("--views must be >= 2: each step takes two different cached views of an image")
    device = pick_device(args.device)
    amp = amp_name(args.amp, device)
    cuda = device.type == "cuda"
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    store_workers = [int(w) for w in args.store_workers.split(",") if w.strip()]
    train = train_config(args.batch, amp)

    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="large_images-") as tmp:
        scratch = Path(tmp)
        root = args.data or scratch / "jpeg"
        paths = image_paths(root) if (root / "train").is_dir() else []
        if paths:
            print(f"data: {len(paths)} image files under {root} (reused)")
        else:
            started = time.perf_counter()
            write_jpeg_folder(root, args.images, args.classes, args.size, args.quality, seed=0)
            paths = image_paths(root)
            seconds = time.perf_counter() - started
            print(f"data: wrote {len(paths)} {args.size}x{args.size} JPEGs to {root} in {seconds:.1f} s")
        if len(paths) < args.batch:
            parser.error(f"--batch {args.batch} is larger than the {len(paths)} images: no full batch per epoch")
        jpeg_bytes = disk_bytes(paths)

        started = time.perf_counter()
        store = decode_store(paths, scratch / "images.npy", args.size)
        decode_s = time.perf_counter() - started
        cache_dir = scratch / "augment"
        cache_dir.mkdir()
        started = time.perf_counter()
        build_cache(store, np.arange(len(store)), RECIPE, args.views, 0, cache_dir, shard_size=16384, progress=False)
        cache_s = time.perf_counter() - started
        cache = ViewCache.open(cache_dir)
        store_bytes = disk_bytes([scratch / "images.npy"])
        started = time.perf_counter()  # the prepare stage's JPEG store of the same files (their bytes kept)
        jpeg_dir = scratch / "jpeg_store"
        jpeg_dir.mkdir()
        plan = plan_dataset("imagefolder", root, [], 3, None, MAX_PIXELS)
        write_store(plan, jpeg_dir, progress=False, codec=Codec("jpeg", args.quality))
        jpeg_store_s = time.perf_counter() - started
        jpeg_store = EncodedImages(jpeg_dir)
        jpeg_store_bytes = disk_bytes(sorted(p for p in jpeg_dir.rglob("*") if p.is_file() and p.suffix != ".parquet"))
        cache_bytes = disk_bytes(sorted(cache_dir.iterdir()))

        run = Run(
            shape=store.shape[1:],
            backbone=backbone_config(args.backbone),
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
            device=device,
            amp=amp,
            train=train,
        )
        info = machine(device, amp)
        print(
            f"machine: {info['cpu']} ({info['cpu_cores_usable']} of {info['cpu_cores']} cores usable, "
            f"{info['torch_threads']} torch threads), torch {info['torch']}, device {info['device']}, amp {amp}"
        )
        print(
            f"run: {args.backbone} (small_stem {run.backbone.small_stem}), SimCLR, batch {run.batch}, "
            f"{run.warmup} + {run.steps} steps, {args.rounds} round(s), {len(paths)} images of {run.shape}, "
            f"K={args.views} cached views"
        )
        print(f"one-off: decode into the store {decode_s:.1f} s, build the cache {cache_s:.1f} s")

        b = args.batch
        ready = tuple(t.to(device) for t in next(cached_pairs(cache, b, 0, 0)))
        augment = BatchAugment(RECIPE)
        loops: dict[str, tuple[str, Callable[[], contextlib.AbstractContextManager[Stream]]]] = {
            "model": (
                "model step alone on ready tensors (ceiling)",
                lambda: contextlib.nullcontext(lambda start: itertools.repeat(ready)),
            ),
            "cache": (
                f"cache loop: cached_pairs, K={args.views} views",
                lambda: contextlib.nullcontext(endless(lambda e: cached_pairs(cache, b, e, 0))),
            ),
        }
        if cuda:
            prefetch = endless(lambda e: cached_pairs(cache, b, e, 0))
            loops["cache_prefetch"] = (
                "cache loop + pinned, non-blocking, prefetched copies",
                lambda: contextlib.nullcontext(lambda start: cuda_prefetched(prefetch(start), device)),
            )
        loops["on_the_fly"] = (
            f"on-the-fly BatchAugment on {device.type}",
            lambda: contextlib.nullcontext(endless(lambda e: on_the_fly_pairs(store, augment, b, e, 0, device=device))),
        )
        for w in store_workers:
            loops[f"jpeg_store_workers_{w}"] = (
                f"JPEG store: JpegStream, {w} decode workers, augment on {device.type}",
                lambda w=w: contextlib.nullcontext(
                    endless(JpegStream(jpeg_store, np.arange(len(jpeg_store)), augment, b, 0, device, w).pairs)
                ),
            )
        for w in workers:
            loops[f"torchvision_workers_{w}"] = (
                f"torchvision ImageFolder + v2 per sample, num_workers={w}",
                lambda w=w: torchvision_loop(root, args.size, b, w, pin=cuda),
            )

        rounds: dict[str, list[float]] = {key: [] for key in loops}
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}")
            for key, (label, open_loop) in loops.items():
                with open_loop() as stream:
                    rounds[key].append(measure(run, label, stream))

    best = {key: max(rates) for key, rates in rounds.items()}
    ceiling = best["model"]
    print(f"\n{'loop':<62} {'img/s':>9} {'/ model':>8}")
    for key, (label, _) in loops.items():
        print(f"{label:<62} {best[key]:9.1f} {best[key] / ceiling:8.2f}")
    ours = "cache_prefetch" if cuda else "cache"  # the cache loop as it would run on this device
    tv_key = max((k for k in best if k.startswith("torchvision_")), key=best.get, default=None)
    if tv_key:
        print(f"{ours} / best torchvision loop ({tv_key}): {best[ours] / best[tv_key]:.2f}")
    if cuda:
        print(f"cache loop + prefetch / model step: {best['cache_prefetch'] / ceiling:.3f} (target >= 0.98)")
    per_image = jpeg_bytes["files"] / len(paths)
    print(
        f"bytes on disk: JPEG folder {mib(jpeg_bytes['files'])} ({per_image / 1024:.1f} KiB per image; "
        f"{mib(jpeg_bytes['allocated'])} allocated), store {mib(store_bytes['files'])}, "
        f"JPEG store {mib(jpeg_store_bytes['files'])}, "
        f"cache (K={args.views}) {mib(cache_bytes['files'])}"
    )

    if args.json:
        results = {
            "images_per_s": best,
            "over_model_step": {key: rate / ceiling for key, rate in best.items()},
            "rounds": rounds,
            "labels": {key: label for key, (label, _) in loops.items()},
            "bytes_on_disk": {
                "jpeg_folder": jpeg_bytes,
                "store": store_bytes,
                "jpeg_store": jpeg_store_bytes,
                "cache": cache_bytes,
            },
            "one_off_seconds": {"decode_store": decode_s, "build_cache": cache_s, "jpeg_store": jpeg_store_s},
            "settings": {
                "images": len(paths),
                "size": args.size,
                "jpeg_quality": args.quality,
                "views": args.views,
                "batch": b,
                "steps": args.steps,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "workers": workers,
                "store_workers": store_workers,
                "backbone": run.backbone.to_dict(),
                "head": dataclasses.asdict(HEAD),
                "augment": dataclasses.asdict(RECIPE),
                "channels_last": True,
            },
            "machine": info,
        }
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
