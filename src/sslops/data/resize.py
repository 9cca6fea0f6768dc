"""The resize policy of prepare: images of any size and colour mode brought to one shape.

The canonical store holds one array of one shape, so a folder of photos of mixed sizes needs a rule, and a
downstream task needs its images at the encoder's input. The rule (`prepare.resize` in params.yaml):

- `side: N` makes every image N x N. `mode: crop` scales the shorter side to N and cuts the centre square (the
  evaluation transform of ImageNet practice: nothing is distorted, the borders of the longer side are lost);
  `mode: pad` scales the longer side to N and pads the rest with black (nothing is lost, the object shrinks).
- `side: null` keeps images as they are when they all share one size; when they do not, the median shorter side
  is used (so a few thumbnails or a few huge photos do not decide the size) and a note says so.
- A downstream task is fitted to an exact (height, width, channels): the encoder's input.

Resampling is Pillow's bicubic (antialiased when shrinking); colour conversion follows `sslops.data.images`
(ITU-R 601-2 luma for grayscale; grayscale to RGB repeats the channel).
"""

from __future__ import annotations

import functools
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from sslops.data.sources import Part, Parts, Plan
from sslops.errors import SslopsError

INPUT = "input.json"  # in the pretraining store: the encoder's input shape, which every task is prepared to


@dataclass(frozen=True)
class Fit:
    """The shape every image is brought to, and how (`crop` or `pad`, see the module docstring)."""

    height: int
    width: int
    channels: int
    mode: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


def fit_image(pixels: np.ndarray, fit: Fit) -> np.ndarray:
    """One uint8 (H, W, C) image brought to `fit.shape` by the module's rule."""
    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")
    img = img.convert("L" if fit.channels == 1 else "RGB")
    height, width = pixels.shape[:2]
    if (height, width) != (fit.height, fit.width):
        pick = max if fit.mode == "crop" else min  # crop: cover the target; pad: fit inside it
        scale = pick(fit.height / height, fit.width / width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - fit.width) // 2, (size[1] - fit.height) // 2
        if fit.mode == "crop":
            img = img.crop((left, top, left + fit.width, top + fit.height))
        else:
            canvas = Image.new(img.mode, (fit.width, fit.height))
            canvas.paste(img, (-left, -top))
            img = canvas
    return np.asarray(img, dtype=np.uint8).reshape(fit.shape)


def _fitted(load: Callable[[], np.ndarray], fit: Fit) -> np.ndarray:
    pixels = load()
    out = np.empty((len(pixels), *fit.shape), dtype=np.uint8)
    for i, image in enumerate(pixels):
        out[i] = fit_image(image, fit)
    return out


def target(plan: Plan, side: int | None, mode: str) -> Fit | None:
    """The fit `prepare.resize` asks for on this plan, or None when every image already shares one shape."""
    shapes = plan.shapes
    channels = max(s[2] for s in shapes)  # readers already agree on channels; max is the safe pick if not
    if side is not None:
        return Fit(side, side, channels, mode)
    if len(shapes) == 1:
        return None
    shorter = statistics.median_low([min(p.shape[:2]) for p in plan.parts for _ in range(p.count)])
    return Fit(shorter, shorter, channels, mode)


def fit_plan(plan: Plan, fit: Fit | None) -> tuple[Plan, dict[str, object]]:
    """`plan` with every part that is not already `fit.shape` resized on load; and what was done, for the record."""
    if fit is None:
        return plan, {"resized": 0}
    resized, sizes = 0, set()
    for part in plan.parts:
        sizes.add(part.shape[:2])
        resized += part.count if part.shape != fit.shape else 0
    record = {"resized": resized, "height": fit.height, "width": fit.width, "channels": fit.channels, "mode": fit.mode}
    notes = plan.notes
    if resized:
        seen = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:4]) + (
            f" and {len(sizes) - 4} more" if len(sizes) > 4 else ""
        )
        shape = f"{fit.height}x{fit.width}x{fit.channels}"
        notes += (f"{resized} of {plan.total} images ({seen}) resized to {shape} ({fit.mode})",)
    parts = _Fitted(plan.parts, fit, plan.total) if resized else plan.parts
    return Plan(parts=parts, classes=plan.classes, notes=notes), record


class _Fitted(Parts):
    """Parts of a plan, each one that is not already `fit.shape` resized on load; made as each is read, so that a
    plan kept as columns (a folder of photos) does not become an object per photo here."""

    def __init__(self, parts: Sequence[Part], fit: Fit, total: int) -> None:
        self.parts, self.fit, self.shape, self.total = parts, fit, fit.shape, total

    def __len__(self) -> int:
        return len(self.parts)

    def images(self) -> int:
        return self.total

    def shapes(self) -> set[tuple[int, int, int]]:
        return {self.shape} if self.parts else set()

    def part(self, i: int) -> Part:
        part = self.parts[i]
        if part.shape == self.shape:
            return part
        load = functools.partial(_fitted, part.load, self.fit)
        source_size = part.source_size or part.shape[:2]
        return replace(part, shape=self.shape, load=load, source_size=source_size, file=None)  # new pixels


def encoder_input(prepared: Path) -> Fit:
    """The shape the pretraining dataset was prepared to (artifacts/prepared/input.json)."""
    try:
        spec = json.loads((prepared / INPUT).read_text())
    except (OSError, ValueError):
        raise SslopsError(
            f"{prepared / INPUT} is missing or unreadable: prepare the pretraining dataset first (dvc repro prepare)."
        ) from None
    return Fit(spec["height"], spec["width"], spec["channels"], spec["mode"])
