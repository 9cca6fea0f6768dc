"""One typed, validated config per params.yaml section.

Why pydantic: it is already installed with MLflow, Prefect and Great Expectations (all three build on it), so
it costs no new dependency, and it gives what hand-written checks did not: every value type- and
range-checked in one declaration, unknown keys refused, and errors that carry the key's full path. The models
declare types and ranges only, never defaults: every value comes from params.yaml, the single home of
defaults, and a missing key is an error that names it.

The ML core never sees these models or the params dict: a stage hands the core its own plain dataclass
(`TrainConfig`, `BackboneConfig`, `AugmentConfig`, ...) built from the validated values with `to_core`. This
module imports nothing of the core, so loading a config stays cheap and DVC reruns a stage only for the code
it runs (tests/test_architecture.py derives each stage's deps from its imports).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.functional_validators import AfterValidator, BeforeValidator, PlainValidator


def _not_bool(value: object) -> object:
    """YAML reads true/false, yes/no and on/off as booleans, which pydantic would take as 1.0 and 0.0 (`flip_p: yes`
    a certain flip): a number knob refuses them. Strings pass on to the float parser, since PyYAML reads `1e-4`
    (no dot) as one."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean (YAML reads true/false, yes/no and on/off as booleans)")
    return value


Number = Annotated[float, BeforeValidator(_not_bool)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveFloat = Annotated[Number, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[Number, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[Number, Field(ge=0, le=1)]
Name = Annotated[str, Field(min_length=1)]
Range = tuple[PositiveFloat, PositiveFloat]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]
Format = Literal["idx", "imagefolder", "cifar10"]
Kind = Literal["classification", "detection", "segmentation"]
# The layouts each task kind is read from: whole-image labels as the pretraining dataset's; boxes (and instance
# masks) as COCO JSON; semantic masks as an image folder beside a mask folder (`sslops.data.dense`).
KIND_FORMATS: dict[str, tuple[str, ...]] = {
    "classification": ("idx", "imagefolder", "cifar10"),
    "detection": ("coco",),
    "segmentation": ("masks",),
}


def _budget(value: object) -> float | str:
    """A label budget: a fraction of the labelled train split in (0, 1], or labels per class ("10/class")."""
    if isinstance(value, str) and re.fullmatch(r"[1-9][0-9]*/class", value):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise ValueError("must be a fraction of the labels in (0, 1] or a number of labels per class such as '10/class'")


Budget = Annotated[float | str, PlainValidator(_budget)]
TaskName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]  # a folder name and a DVC stage key


class Section(BaseModel):
    """A params.yaml mapping: frozen, unknown keys refused, no defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_core(self, cls: type, **extra: Any) -> Any:
        """The ML core's dataclass `cls`, filled from this section's values of the same names (plus `extra`)."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls) if f.name not in extra}, **extra)

    def record(self) -> dict[str, Any]:
        """What MLflow logs and lineage shows: the validated values that ran."""
        return self.model_dump(mode="json")


def _ordered(pair: tuple[float, float], name: str) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(pair)}")


class TrackingParams(Section):
    experiment: Name
    http_timeout_s: PositiveFloat  # a tracking server: per-request timeout, and the reachability check at stage start
    http_retries: NonNegativeInt  # a tracking server: retries of a failed request (MLflow backs off between them)


def _inside_project(root: str) -> str:
    """The raw data lives in the project's DVC-tracked data/ folder; an absolute path or `..` would read files
    outside it (on a shared server: other people's data, through a flow run's overrides)."""
    path = PurePosixPath(root)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError("must be a folder inside the project (relative, without '..')")
    return root


def _folder_name(name: str) -> str:
    """A folder beside the split folders, by its name alone: a path could point outside the dataset's root, and a
    split's name would make its labelled (or test) images unlabeled pretraining images too."""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError("must be the name of a folder inside the dataset's root, not a path")
    if name in ("train", "test"):
        raise ValueError("must not be a split's folder (train, test): its images would be pretrained on twice")
    return name


def _distinct_classes(classes: list[str]) -> list[str]:
    """A class name is a label id's meaning: one name twice would give two ids the same name in every table."""
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ValueError(
            f"each class may appear once, {', '.join(repeated)} repeats (an id no label uses still needs a name of "
            "its own, e.g. unused_3)"
        )
    return classes


class ResizeKnobs(Section):
    """`prepare.resize`: how images of other sizes are brought to one (`sslops.data.resize`)."""

    side: PositiveInt | None  # null: keep one shared size; a mix of sizes gets the median shorter side
    mode: Literal["crop", "pad"]  # crop: shorter side to `side`, centre crop; pad: longer side to `side`, black borders


class StoreKnobs(Section):
    """`prepare.store`: how the prepared images are kept (`sslops.data.store`, `sslops.data.encoded`)."""

    format: Literal["auto", "raw", "jpeg"]  # auto: jpeg from 64x64 pixels up, raw below
    quality: Annotated[StrictInt, Field(ge=1, le=100)]  # JPEG quality of images re-encoded for the store


class PrepareParams(Section):
    """`prepare:` the pretraining dataset. Its labels, if any, are never read by pretraining itself."""

    format: Format
    root: Annotated[str, Field(min_length=1)]  # inside the project (DVC tracks it); checked below
    classes: list[Name]  # empty: taken from the data (imagefolder folders, CIFAR's batches.meta)
    channels: Annotated[Literal["auto", 1, 3], BeforeValidator(_not_bool)]  # YAML's `yes` is not 1 channel
    unlabeled_dir: Name
    max_pixels: PositiveInt  # imagefolder and `sslops embed`: larger images are refused before decoding
    mask_ignore: Annotated[StrictInt, Field(ge=0, le=255)]  # segmentation masks: the value of unlabelled pixels
    resize: ResizeKnobs
    workers: PositiveInt | None  # processes that decode images (also for the tasks); null: every core
    store: StoreKnobs

    _root = field_validator("root")(_inside_project)
    _unlabeled_dir = field_validator("unlabeled_dir")(_folder_name)
    _classes = field_validator("classes")(_distinct_classes)

    @model_validator(mode="after")
    def _side_within_max_pixels(self) -> PrepareParams:
        """A resize target is an image size like any other: bounded by the same limit as the files read."""
        if self.resize.side is not None and self.resize.side**2 > self.max_pixels:
            raise ValueError(
                f"resize.side {self.resize.side} makes images of {self.resize.side**2:,} pixels, more than "
                f"max_pixels ({self.max_pixels:,})"
            )
        return self

    @property
    def name(self) -> str:
        """The dataset's name: its folder under data/ (`data/fashion-mnist` -> `fashion-mnist`)."""
        return PurePosixPath(self.root).name


class TaskParams(Section):
    """`tasks.<name>`: one labelled downstream task, prepared to the encoder's input (its channels; a classification
    task also to its size)."""

    kind: Kind  # what is labelled: whole images (classification), boxes (detection) or pixels (segmentation)
    format: Literal["idx", "imagefolder", "cifar10", "coco", "masks"]  # the layout of the task's files (KIND_FORMATS)
    root: Annotated[str, Field(min_length=1)]  # the task's folder inside the project's data/
    classes: list[Name]  # class names in label order; empty: taken from the data
    budgets: Annotated[list[Budget], Field(min_length=1)]  # fractions of the labelled train split, or N/class

    _root = field_validator("root")(_inside_project)
    _classes = field_validator("classes")(_distinct_classes)

    @field_validator("budgets")
    @classmethod
    def _distinct(cls, budgets: list[float | str]) -> list[float | str]:
        """Each budget names its outputs and child runs: a repeat would overwrite the first one's."""
        repeated = sorted({str(b) for b in budgets if budgets.count(b) > 1})
        if repeated:
            raise ValueError(f"each budget may appear once, {', '.join(repeated)} repeats")
        return budgets

    @model_validator(mode="after")
    def _format_of_kind(self) -> TaskParams:
        """A layout is read for the labels it holds: a COCO file read as classes would be nonsense."""
        if self.format not in KIND_FORMATS[self.kind]:
            raise ValueError(
                f"a {self.kind} task is read from {' or '.join(KIND_FORMATS[self.kind])}, not {self.format}"
            )
        if self.dense and any(isinstance(b, str) for b in self.budgets):
            raise ValueError(f"a {self.kind} task's budgets are fractions of its train images (N/class needs classes)")
        if self.kind == "segmentation" and not self.classes:
            raise ValueError("a segmentation task lists its classes: a mask holds ids, not names (0: the background)")
        return self

    @property
    def dense(self) -> bool:
        """Whether the task labels boxes or pixels (`sslops.stages.dense` runs its stages)."""
        return self.kind != "classification"


class TasksParams(RootModel[Annotated[dict[TaskName, TaskParams], Field(min_length=1)]]):
    """`tasks:` the downstream tasks by name; each gets its own prepare, validate, finetune and evaluate stages."""

    model_config = ConfigDict(frozen=True)

    def __getitem__(self, name: str) -> TaskParams:
        return self.root[name]

    def names(self) -> list[str]:
        return list(self.root)

    def record(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ValidateParams(Section):
    splits: Annotated[list[Literal["train", "test", "unlabeled"]], Field(min_length=1)]
    min_rows: NonNegativeInt  # fewest images the dataset may hold
    max_rows: PositiveInt  # most images the dataset may hold
    min_class_share: Probability
    max_duplicate_share: Probability
    max_blank_share: Probability
    blank_std: NonNegativeFloat  # pixel standard deviation below which an image counts as blank
    max_leaked_test: NonNegativeInt
    examples: NonNegativeInt

    @model_validator(mode="after")
    def _rows(self) -> ValidateParams:
        if self.min_rows > self.max_rows:
            raise ValueError(f"min_rows ({self.min_rows}) must not exceed max_rows ({self.max_rows})")
        return self


class AugmentParams(Section):
    """`augment:` the cache's shape (views, seed, shard_size) and the augmentation recipe (the core's AugmentConfig)."""

    views: NonNegativeInt
    seed: NonNegativeInt  # view k of shard s is a function of (seed, s, k): a rebuild is byte-identical
    shard_size: PositiveInt
    disk_budget_gb: PositiveFloat  # the most the cache may take; the disk's free space caps it too
    over_budget: Literal["fewer_views", "on_the_fly", "refuse"]
    size: PositiveInt | None
    crop_scale: tuple[Probability, Probability]  # random resized crop: share of the image's area
    crop_ratio: Range  # random resized crop: aspect ratio range
    flip_p: Probability  # probability of a horizontal flip
    jitter_p: Probability  # probability of colour jitter
    brightness: NonNegativeFloat  # colour jitter: brightness factor range, 1 ± this
    contrast: NonNegativeFloat  # colour jitter: contrast factor range, 1 ± this
    saturation: NonNegativeFloat
    hue: Annotated[Number, Field(ge=0, le=0.5)]
    grayscale_p: Probability
    blur_p: Probability  # probability of a Gaussian blur
    blur_sigma: Range  # Gaussian blur: sigma range in px
    rotation: Annotated[Number, Field(ge=0, le=180)]

    @model_validator(mode="after")
    def _check(self) -> AugmentParams:
        if self.views == 1:
            raise ValueError("views must be 0 (augment on the fly) or at least 2 (two different views per step), got 1")
        if self.crop_scale[0] == 0:
            raise ValueError("crop_scale must be within (0, 1], got a lower bound of 0")
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            _ordered(getattr(self, name), name)
        return self


class BackboneKnobs(Section):
    name: Literal["auto", "small_cnn", "resnet18", "resnet34", "resnet50"]  # auto: by image size (resolve_backbone)
    width: PositiveInt  # small_cnn: channels after the stem (then 2x, 4x, 8x)
    stem_width: PositiveInt | None  # small_cnn: channels of the first conv; null: width
    pool: PositiveInt  # small_cnn: the last feature map pooled to pool x pool cells (1: global)
    small_stem: StrictBool  # ResNets: 3x3 stem without max-pool, for images up to ~32 px


class MonitorKnn(Section):
    k: PositiveInt  # neighbours of the monitor's weighted kNN
    temperature: PositiveFloat  # temperature of its similarity weights
    monitor_bank_size: PositiveInt | None  # bank of intermediate epochs; the last uses every other labelled image


class MonitorProbe(Section):
    weight_decay: NonNegativeFloat  # L2 penalty of the last epoch's linear probe
    iterations: PositiveInt  # its L-BFGS iterations


class PretrainParams(Section):
    """`pretrain:` with the selected profile merged in (see `resolve_profile`): the values that ran."""

    profile: Name
    knobs: dict[Name, dict[Name, Any]]  # each method's mapping (`pretrain.simclr`, ...), as params.yaml gives them
    method: Name  # a method of sslops.ml.methods; its knobs are the mapping of the same name
    backbone: BackboneKnobs
    images: PositiveInt  # the budget in images seen (2 views each); epochs follow from the dataset's size
    min_steps: PositiveInt  # fewer optimiser steps than this is warned about (too short to learn much)
    batch_size: PositiveInt
    optimizer: Literal["lars", "sgd", "adamw"]
    base_lr: PositiveFloat
    weight_decay: NonNegativeFloat  # L2 penalty of the optimiser
    momentum: Annotated[Number, Field(ge=0, lt=1)]  # momentum of LARS and SGD
    warmup_fraction: Annotated[Number, Field(ge=0, lt=1)]  # of all steps
    final_lr_fraction: Probability  # the cosine schedule ends at base LR times this
    amp: Literal["auto", "bf16", "fp16", "off"]
    channels_last: StrictBool | Literal["auto"]  # auto: on CPU and CUDA (faster convolutions)
    compile: StrictBool  # torch.compile the model (did not pay on CPU: docs/benchmarks.md)
    device: Device
    threads: PositiveInt | None
    decode_workers: NonNegativeInt | None  # a JPEG store: processes decoding batches (0: this one); null: every core
    seed: NonNegativeInt  # initial weights and the order of the images
    val_fraction: Annotated[Number, Field(gt=0, lt=1)]  # of labelled train, for the monitor and promotion metric
    val_seed: NonNegativeInt  # the split's own seed: another pretraining seed is still scored on the same images
    knn: MonitorKnn
    probe: MonitorProbe

    @model_validator(mode="before")
    @classmethod
    def _gather_knobs(cls, raw: Any) -> Any:
        """Every mapping under `pretrain:` that is not one of the keys above holds a method's knobs.

        The methods declare their knobs (types and ranges) in their own files in the ML core, which this module
        does not import (loading a config stays cheap, and a stage's deps stay its own code); `method_knobs` in
        config.validation checks them against those declarations where the method is built. Anything else unknown
        stays unknown and is refused.
        """
        if not isinstance(raw, dict) or "knobs" in raw:
            return raw
        knobs = {k: v for k, v in raw.items() if k not in cls.model_fields and isinstance(v, dict)}
        return {**{k: v for k, v in raw.items() if k not in knobs}, "knobs": knobs}

    @field_validator("method")
    @classmethod
    def _method_has_knobs(cls, method: str, info: ValidationInfo) -> str:
        knobs = info.data.get("knobs") or {}
        if method not in knobs:
            known = ", ".join(knobs) or "none"
            raise ValueError(f"no pretrain.{method} mapping holds its knobs (methods with knobs: {known})")
        return method

    def record(self) -> dict[str, Any]:
        """The resolved values that ran, with only the active method's knobs (the others did not run)."""
        return {**self.model_dump(mode="json", exclude={"knobs"}), self.method: self.knobs[self.method]}


class RegisterParams(Section):
    """`register:` the model registry: name, promotion rule, and where the stage records what it registered."""

    model_name: Name
    metric: Literal["linear_acc", "knn_acc"]
    min_improvement: NonNegativeFloat
    record_path: Annotated[str, Field(pattern=r"\.json$")]  # a DVC output (dvc.yaml: ${register.record_path})

    _record_path = field_validator("record_path")(_inside_project)


class ProbeSearch(Section):
    weight_decays: Annotated[list[NonNegativeFloat], Field(min_length=1)]  # L2 penalties, one chosen on held-out labels
    iterations: PositiveInt  # L-BFGS iterations of each probe fit


class Recipe(Section):
    """One fine-tuning recipe (the core's `FinetuneConfig` without its seed)."""

    optimizer: Literal["sgd", "adamw"]
    head: Literal["probe", "fresh"]
    epochs: PositiveInt  # passes over the labelled subset (capped by max_steps)
    max_steps: PositiveInt
    batch_size: PositiveInt  # labelled images per step
    lr: PositiveFloat
    backbone_lr_scale: NonNegativeFloat
    weight_decay: NonNegativeFloat  # AdamW's or SGD's weight decay
    crop_scale: tuple[Probability, Probability]
    flip_p: Probability  # probability of a horizontal flip while fine-tuning

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        _ordered(self.crop_scale, "crop_scale")
        return self


Init = Literal["pretrained", "scratch"]  # the inits that are fine-tuned (raw pixels are not)
Protocol = Literal["finetune", "linear", "knn", "distill"]  # sslops.ml.results.PROTOCOLS


class RecipeSearch(Section):
    """`finetune.search`: how trials are scored on held-out labels (`sslops search-recipes`, and a task's own stage)."""

    holdout: Annotated[Number, Field(gt=0, lt=1)]  # share of each labelled subset held out to score a trial
    auto: list[Name]  # trials a task without finetune.chosen searches in its own stage; empty: the base recipe


def _budget_key(key: str) -> str:
    """A budget key exactly as metrics spell it: `frac_0.10` means the same budget as `frac_0.1` but would never match
    it, so whatever it declared would silently not apply."""
    if not re.fullmatch(r"frac_(0\.[0-9]+|1)|per_class_[1-9][0-9]*", key):
        raise ValueError("must be a budget key as metrics name them: frac_<fraction> or per_class_<n> (frac_0.01)")
    if key.startswith("frac_") and key != f"frac_{float(key.removeprefix('frac_')):g}":
        raise ValueError(f"must be written as metrics name it: frac_{float(key.removeprefix('frac_')):g}")
    return key


BudgetKey = Annotated[str, AfterValidator(_budget_key)]


class Distill(Section):
    """`finetune.distill`: self-training on all of a task's train images (labels only from the budget's subset)
    after fine-tuning, at the budgets listed."""

    budgets: list[BudgetKey]  # budget keys to distill at, for both inits; empty: none
    recipe: Recipe  # the student's training, written as its changes to `finetune.recipe`; epochs count the pool

    @model_validator(mode="after")
    def _fresh_head(self) -> Distill:
        if self.recipe.head != "fresh":
            raise ValueError("recipe.head must be 'fresh': a student starts with a new head (it has no probe)")
        return self


class DenseRecipeParams(Section):
    """One fine-tuning recipe of a detection or segmentation model (the core's `DenseRecipe` without its seed)."""

    steps: PositiveInt  # optimiser steps, cosine to 0
    batch_size: PositiveInt  # scenes per step
    lr: PositiveFloat  # AdamW's rate of the head (and of a random-init backbone)
    backbone_lr_scale: NonNegativeFloat  # pretrained backbone's rate = lr x this
    weight_decay: NonNegativeFloat
    flip_p: Probability  # horizontal flips of a scene with its boxes or mask


class DenseFinetune(Section):
    """`finetune.dense`: how detection and segmentation tasks fine-tune. Every trial is tried on held-out scenes of
    each budget, for both inits alike, and each init trains every label draw with its best (`sslops.stages.dense`)."""

    recipe: DenseRecipeParams
    trials: Annotated[dict[Name, DenseRecipeParams], Field(min_length=1)]  # each written as its changes to `recipe`


def _changes_over(model: type[Section], base: dict[str, Any]) -> Any:
    """A function making a recipe written as the keys it changes into the whole recipe it stands for. When `base`
    is invalid its own errors are reported once, not again for every recipe written over it."""
    try:
        model.model_validate(base)
        valid = True
    except ValueError:
        valid = False

    def over(changes: Any) -> Any:
        if not isinstance(changes, dict):
            return changes
        return {**base, **changes} if valid else model.model_construct(**{**base, **changes})

    return over


class FinetuneParams(Section):
    """`finetune:` the transfer protocols, shared by every task; each task names its own label budgets."""

    model: Name | NonNegativeInt  # `candidate` (the version in metrics/register.json), another alias, or a number
    seed: NonNegativeInt  # label draws and initial weights: draw d uses seed + d
    draws: PositiveInt  # label subsets per budget below 100 % (seeds seed, seed + 1, ...)
    device: Device  # auto: cuda, then mps, then cpu
    amp: Literal["auto", "bf16", "fp16", "off"]  # the fine-tuning steps' autocast, resolved as pretrain.amp
    channels_last: StrictBool | Literal["auto"]
    probe: ProbeSearch
    recipe: Recipe
    trials: Annotated[dict[Name, Recipe], Field(min_length=1)]  # each written as its changes to `recipe`
    chosen: dict[TaskName, dict[BudgetKey, dict[Init, Name]]]  # the trial each side fine-tunes with
    headline: dict[TaskName, dict[BudgetKey, dict[Init, Protocol]]]  # the protocol of each side's headline figure
    search: RecipeSearch
    distill: Distill
    dense: DenseFinetune

    @model_validator(mode="before")
    @classmethod
    def _changes_over_recipe(cls, raw: Any) -> Any:
        """params.yaml writes a trial (and the distillation student's recipe) as the keys it changes; each is
        validated as the whole recipe it makes."""
        if not isinstance(raw, dict) or not isinstance(raw.get("recipe"), dict):
            return raw
        over = _changes_over(Recipe, raw["recipe"])
        if isinstance(raw.get("trials"), dict):
            raw = {**raw, "trials": {k: over(v) for k, v in raw["trials"].items()}}
        distill = raw.get("distill")
        if isinstance(distill, dict) and isinstance(distill.get("recipe"), dict):
            raw = {**raw, "distill": {**distill, "recipe": over(distill["recipe"])}}
        dense = raw.get("dense")
        if isinstance(dense, dict) and isinstance(dense.get("recipe"), dict) and isinstance(dense.get("trials"), dict):
            over = _changes_over(DenseRecipeParams, dense["recipe"])
            raw = {**raw, "dense": {**dense, "trials": {k: over(v) for k, v in dense["trials"].items()}}}
        return raw

    @model_validator(mode="after")
    def _trials_exist(self) -> FinetuneParams:
        named = [(f"search.auto[{i}]", trial) for i, trial in enumerate(self.search.auto)]
        named += [
            (f"chosen.{task}.{budget}.{init}", trial)
            for task, budgets in self.chosen.items()
            for budget, inits in budgets.items()
            for init, trial in inits.items()
        ]
        for key, trial in named:
            if trial not in self.trials:
                raise ValueError(f"{key} names trial '{trial}', not one of finetune.trials ({', '.join(self.trials)})")
        for task, budgets in self.headline.items():
            for budget, inits in budgets.items():
                for init, protocol in inits.items():
                    if protocol == "distill" and budget not in self.distill.budgets:
                        raise ValueError(
                            f"headline.{task}.{budget}.{init} is 'distill', but finetune.distill.budgets does not "
                            f"list {budget}: nothing would be distilled there"
                        )
        return self

    def headline_for(self, task: str, budget: str, init: str) -> str:
        """The protocol whose accuracy stands for `init` in the task's headline at one budget key: the one the
        recipe search chose on held-out labels (`finetune.headline`), else fine-tuning with the chosen recipe. Raw
        pixels are never fine-tuned: their baseline is the linear probe. Declared before any test score exists, so
        the best-against-best gain involves no choice made on test."""
        if init == "pixels":
            return "linear"
        return self.headline.get(task, {}).get(budget, {}).get(init, "finetune")

    def searched_in_stage(self, task: str) -> list[str]:
        """The trials `task`'s own finetune stage searches before it trains: `search.auto` for a task with no
        committed choices (a user's own; bench/finetune_search.py searches the committed ones), else none."""
        return [] if task in self.chosen else list(self.search.auto)

    def recipe_for(self, task: str, budget: str, init: str) -> tuple[str, Recipe]:
        """(trial name, recipe) for one task, budget key (`frac_0.01`) and init: the chosen trial, else `base` (the
        recipe as written), for budgets the search has not covered."""
        name = self.chosen.get(task, {}).get(budget, {}).get(init)
        return (name, self.trials[name]) if name else ("base", self.recipe)


class KnnClassifier(Section):
    k: PositiveInt  # neighbours of the weighted kNN classifier
    temperature: PositiveFloat  # temperature of the kNN's similarity weights


class EvaluateParams(Section):
    seed: NonNegativeInt  # the t-SNE maps' seed
    device: Device  # auto: cuda, then mps, then cpu
    knn: KnnClassifier
    map_points: Annotated[StrictInt, Field(ge=2)]
    perplexity: PositiveFloat  # t-SNE's perplexity


class FlowParams(Section):
    """`flow:` the Prefect deployments over the stages: schedule, work pool, retries and lock wait."""

    cron: Name
    work_pool: Name
    timezone: Name
    retries: NonNegativeInt
    retry_delay_s: NonNegativeFloat  # seconds between a failed stage and its retry
    lock_timeout_s: NonNegativeFloat
    mlflow_ui: Name

    @property
    def ui_base(self) -> str:
        return self.mlflow_ui.rstrip("/")


SECTIONS: dict[str, type[Section] | type[TasksParams]] = {
    "tracking": TrackingParams,
    "prepare": PrepareParams,
    "tasks": TasksParams,
    "validate": ValidateParams,
    "augment": AugmentParams,
    "pretrain": PretrainParams,
    "register": RegisterParams,
    "finetune": FinetuneParams,
    "evaluate": EvaluateParams,
    "flow": FlowParams,
}
