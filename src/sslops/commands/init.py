"""`sslops init PATH`: from a folder of one's own images to params that run on it.

It surveys the folder (`sslops.data.survey`: layout, classes, counts, sizes, colour modes, every unusable file),
then proposes the params a person would otherwise work out by hand: `prepare` pointed at the folder, one shared
image side where sizes differ, a downstream task for its labelled part with label budgets its smallest class can
fill, and what pretraining will cost here (the backbone `auto` picks at that side, the epochs the images budget
makes, minutes from a few seconds of calibration). The CLI writes the proposal into params.yaml, runs `dvc add`,
and says what to run next; with an unusable folder it writes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sslops.config import Project
from sslops.data.survey import SPLITS, Survey, median_side
from sslops.errors import SslopsError

PER_CLASS_BUDGETS = (10, 50, 250, 1000)  # labels per class offered as budgets, where the smallest class can give them
MAX_SIDE = 224  # a proposed side above this is capped: photos train at 224 px at most (ImageNet's size)
PRETRAIN_TARGET_S = 30 * 60  # a first pretraining run on one's own images should take about this at most


@dataclass
class Proposal:
    """What `sslops init` would write: dotted params keys and their values, and what it decided, in words."""

    task: str
    updates: dict[str, Any]  # dotted key: value (a new key only within an existing mapping)
    deletions: list[str]  # dotted keys to remove
    removed_tasks: list[str]
    side: int | None
    channels: int
    budgets: list[float | str]
    notes: list[str] = field(default_factory=list)


def data_folder(project: Project, path: Path) -> str:
    """`path` as params.yaml names it: a folder inside the project's DVC-tracked data/."""
    resolved = path.resolve()
    data = (project.root / "data").resolve()
    if resolved == data:
        raise SslopsError(f"{path}: that is data/ itself; name the folder of one dataset under it, e.g. data/my-images")
    if not resolved.is_relative_to(data):
        raise SslopsError(
            f"{path}: not a folder inside {data}; DVC versions the project's data/ folder, so copy the images "
            f"there first (cp -r {path} data/{path.resolve().name}) and run `sslops init data/{path.resolve().name}`."
        )
    return (PurePosixPath("data") / resolved.relative_to(data).as_posix()).as_posix()


def task_name(root: str) -> str:
    """A task name from the folder's name: lower case, other characters as hyphens (a DVC stage key)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", PurePosixPath(root).name.lower()).strip("-_")
    if not name:
        raise SslopsError(f"{root}: its folder name gives no usable task name; rename the folder")
    return name


def budgets_for(smallest_class: int) -> list[float | str]:
    """Labels per class that the smallest class can give at most half of its train images to, then all labels."""
    per_class = [n for n in PER_CLASS_BUDGETS if 2 * n <= smallest_class] or [max(1, smallest_class // 2)]
    return [*(f"{n}/class" for n in per_class), 1.0]


def propose(project: Project, found: Survey, root: str, replace_tasks: bool, side: int | None = None) -> Proposal:
    """The params for the surveyed folder at `root` (as data_folder gives it)."""
    sizes = set(found.sizes)
    if side is None and len(sizes) > 1:
        side = min(median_side(found), MAX_SIDE)
    channels = 1 if found.gray == sum(found.modes.values()) else 3
    name = task_name(root)
    budgets = budgets_for(found.smallest_class)
    task = {
        "kind": "classification",
        "format": found.layout,
        "root": root,
        "classes": found.classes,
        "budgets": budgets,
    }
    tasks, finetune = project.section("tasks"), project.section("finetune")
    removed = [t for t in tasks if t != name] if replace_tasks else []
    updates: dict[str, Any] = {
        "prepare.format": found.layout,
        "prepare.root": root,
        "prepare.classes": found.classes,
        "prepare.resize.side": side,
        f"tasks.{name}": task,
    }
    deletions = [f"tasks.{t}" for t in removed]  # and their recipe choices, which would only mislead
    deletions += [f"finetune.{key}.{t}" for key in ("chosen", "headline") for t in removed if t in finetune[key]]
    proposal = Proposal(name, updates, deletions, removed, side, channels, budgets)
    if found.gray and found.gray < sum(found.modes.values()):
        proposal.notes.append(f"{found.gray} grayscale images among colour ones: all become RGB")
    auto = project.config("finetune").searched_in_stage(name)
    if name not in finetune["chosen"]:
        proposal.notes.append(
            f"no recipe choices for {name} in finetune.chosen: its finetune stage searches {', '.join(auto)} on "
            "held-out labels, alike for both inits"
            if auto
            else f"no recipe choices for {name} in finetune.chosen and finetune.search.auto is empty: both inits "
            "fine-tune with finetune.recipe, unsearched"
        )
    return proposal


def fit_budget(proposal: Proposal, images: int, seconds: float, batch_size: int, min_steps: int) -> str:
    """What pretraining will cost, in words; a budget of `images` that would take longer than `PRETRAIN_TARGET_S`
    here is cut to fit (never below `min_steps` steps), and the cut goes into the proposal."""
    if seconds <= PRETRAIN_TARGET_S:
        return f"pretrain.images {images:,}: {_minutes(seconds)} here"
    fitted = max(min_steps * batch_size, int(images * PRETRAIN_TARGET_S / seconds) // 10_000 * 10_000)
    if fitted >= images:
        return f"pretrain.images {images:,}: {_minutes(seconds)} here (at pretrain.min_steps already)"
    proposal.updates["pretrain.images"] = fitted
    cut = _minutes(seconds * fitted / images)
    return f"pretrain.images {images:,} -> {fitted:,}: {cut} here instead of {_minutes(seconds)}"


def _minutes(seconds: float) -> str:
    return f"about {seconds / 60:.0f} min" if seconds >= 60 else "under a minute"


def describe(found: Survey, proposal: Proposal, backbone: str, pretraining: str) -> str:
    """What the survey found and what will be written, for a person to check before the first run."""
    sides = found.shorter_sides()
    per_class = ", ".join(f"{c} {n}" for c, n in found.counts["train"].items())
    counts = ", ".join(f"{split} {sum(found.counts[split].values()):,}" for split in SPLITS if split in found.counts)
    if len(set(found.sizes)) == 1:
        shown = f"one size, {found.sizes[0][1]}x{found.sizes[0][0]} px"
    else:
        shown = (
            f"{len(set(found.sizes))} sizes, shorter side {min(sides)} to {max(sides)} px (median {median_side(found)})"
        )
    colour = ", ".join(f"{n:,} {mode}" for mode, n in found.modes.most_common())
    side = f"every image {proposal.side}x{proposal.side} (prepare.resize)" if proposal.side else "kept as it is"
    lines = [
        f"sslops init: {proposal.updates['prepare.root']}",
        f"  layout      {found.layout}" + (f", {found.unlabeled:,} unlabeled images" if found.unlabeled else ""),
        f"  classes     {len(found.classes)}: {', '.join(found.classes)}",
        f"  images      {counts}; train per class: {per_class}",
        f"  sizes       {shown}; modes: {colour}",
        "proposed",
        f"  input       {side}, {proposal.channels} channel(s); encoder {backbone}",
        f"  task        {proposal.task}: budgets {', '.join(str(b) for b in proposal.budgets)}"
        + (f" (replaces {', '.join(proposal.removed_tasks)})" if proposal.removed_tasks else ""),
        f"  pretraining {pretraining}",
    ]
    lines += [f"  note        {note}" for note in proposal.notes]
    return "\n".join(lines)
