"""What every raw-format reader produces: a plan of image parts, read lazily.

Readers first *plan* (walk files, read headers, check sizes and labels) and only then *load* pixels,
so a mismatched image size or an empty class folder is reported before any large output is written,
and the canonical store can be filled part by part without holding a whole dataset in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np


@dataclass(frozen=True, slots=True)  # slots: a folder of a million photos plans a million parts
class Part:
    """A run of images from one source file, all of one shape, loaded on demand.

    `load()` returns uint8 pixels shaped (count, height, width, channels).
    `labels` holds one class index per image, or None for the unlabeled pool.
    """

    split: str
    source: str
    count: int
    shape: tuple[int, int, int]
    labels: np.ndarray | None
    load: Callable[[], np.ndarray] = field(repr=False, compare=False)
    source_size: tuple[int, int] | None = None  # (height, width) in the file, when `sslops.data.resize` changed it
    file: str | None = None  # a JPEG of exactly this one image as loaded: the store may keep its bytes as they are


@dataclass(frozen=True)
class Plan:
    """Every part of a dataset, plus the class names that label indices refer to. `parts` may make each Part as it
    is read (an ImageFolder's are columns: a Part object per photo of millions would be most of prepare's memory)."""

    parts: Sequence[Part]
    classes: list[str]
    notes: tuple[str, ...] = ()  # what the reader decided for the user, e.g. how mixed colour modes were converted
    modes: dict[str, int] = field(default_factory=dict)  # the files' colour modes, where the reader read headers

    @property
    def total(self) -> int:
        return self.parts.images() if isinstance(self.parts, Parts) else sum(p.count for p in self.parts)

    @property
    def shapes(self) -> set[tuple[int, int, int]]:
        return self.parts.shapes() if isinstance(self.parts, Parts) else {p.shape for p in self.parts}


class Parts(Sequence[Part]):
    """Parts made as they are read, from whatever a reader keeps instead of an object per image: subclasses give
    `__len__`, `part(i)` for 0 <= i < len, and the images and shapes of all parts without making each part (a
    prepare asks for those several times, and a million parts take seconds to make); indexing, slicing and iteration
    are here."""

    def part(self, i: int) -> Part:
        raise NotImplementedError

    def images(self) -> int:
        raise NotImplementedError

    def shapes(self) -> set[tuple[int, int, int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Part]:
        return map(self.part, range(len(self)))

    @overload
    def __getitem__(self, i: int) -> Part: ...
    @overload
    def __getitem__(self, i: slice) -> list[Part]: ...
    def __getitem__(self, i: int | slice) -> Part | list[Part]:
        if isinstance(i, slice):
            return [self.part(k) for k in range(*i.indices(len(self)))]
        return self.part(range(len(self))[i])  # negative indices, and IndexError past the end
