"""Project paths and params.yaml: the raw sections and their typed, validated configs.

Every stage resolves paths against the project root (the folder holding dvc.yaml), so stages behave the
same whether DVC, Prefect, a test or a person in a sub-folder starts them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from sslops.config.schema import SECTIONS, Section
from sslops.config.validation import parse_section
from sslops.errors import SslopsError

ROOT_ENV = "SSLOPS_ROOT"


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: PyYAML keeps the last silently, so a section pasted
    twice (or a knob set in two places) would run with values the reader of the first one does not expect."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges a shared mapping: not a repeat
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                break  # the parent's construction refuses an unhashable key with its own error
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice in one mapping; the second time", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def find_root(start: Path | None = None) -> Path:
    """Return the project root: $SSLOPS_ROOT, else the nearest ancestor of `start` holding dvc.yaml."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    raise SslopsError(
        f"No dvc.yaml found in {here} or any folder above it: run sslops from inside the project "
        f"or set {ROOT_ENV} to the project folder."
    )


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys (`pretrain.lr`), the form MLflow and `dvc exp run -S` use."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def params_hash(params: dict[str, Any]) -> str:
    """A short, order-independent fingerprint of a params section, for lineage tags."""
    canonical = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DatasetOutputs:
    """One dataset's outputs: the pretraining dataset's at the top of artifacts/, metrics/ and plots/; a downstream
    task's in `tasks/<name>/` below each, so tasks never share a file and DVC reruns only the task that changed."""

    artifacts: Path
    metrics: Path
    plots: Path

    @property
    def prepared(self) -> Path:
        return self.artifacts / "prepared"

    @property
    def validation(self) -> Path:
        return self.artifacts / "validation"

    @property
    def validated_marker(self) -> Path:
        """Written by validate only when every expectation passed; downstream stages depend on it."""
        return self.artifacts / "validated.json"

    @property
    def finetune(self) -> Path:
        return self.artifacts / "finetune"

    @property
    def evaluate(self) -> Path:
        return self.artifacts / "evaluate"


@dataclass(frozen=True)
class Project:
    """The project folder and the well-known paths inside it."""

    root: Path

    @classmethod
    def discover(cls) -> Project:
        return cls(find_root())

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @cached_property
    def params(self) -> dict[str, Any]:
        """params.yaml as a dict; a missing or malformed file is a user error, not a traceback."""
        try:
            with open(self.params_file, encoding="utf-8") as fh:  # an error then names the file, not "<unicode string>"
                loaded = yaml.load(fh, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
        except FileNotFoundError:
            raise SslopsError(f"{self.params_file} is missing: every stage reads its knobs from it.") from None
        except yaml.YAMLError as exc:
            raise SslopsError(f"{self.params_file} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise SslopsError(f"{self.params_file} must hold a mapping of stage names to their params.")
        return loaded

    def section(self, name: str) -> dict[str, Any]:
        """One stage's params group, raw; missing groups are a user error naming the file."""
        value = self.params.get(name)
        if not isinstance(value, dict):
            raise SslopsError(f"{self.params_file} has no '{name}:' section (a mapping of that stage's params).")
        return value

    def config(self, name: str) -> Section:
        """The typed, validated config of section `name` (profiles resolved), or an error naming the bad key."""
        if name not in self._configs:
            unknown = sorted(set(self.params) - set(SECTIONS))
            if unknown:
                raise SslopsError(
                    f"{self.params_file}: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})."
                )
            self._configs[name] = parse_section(name, self.section(name), self.params_file.name)
        return self._configs[name]

    def check(self) -> None:
        """Validate every section of params.yaml, all problems at once: what `sslops repro` and `sslops docs` do
        first, so a typo in a later stage's section fails before the earlier stages spend their minutes."""
        problems = []
        for name in SECTIONS:
            try:
                self.config(name)
            except SslopsError as exc:
                problems.append(str(exc))
        if problems:  # a missing file or an unknown section is said once, not once per section
            raise SslopsError("\n".join(dict.fromkeys(problems)))

    @cached_property
    def _configs(self) -> dict[str, Section]:
        return {}

    def path(self, relative: str | os.PathLike[str]) -> Path:
        """Resolve a path from params.yaml or dvc.yaml against the project root."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    # Well-known outputs, shared by the stage that writes them and the stages that read them.
    def outputs(self, task: str | None = None) -> DatasetOutputs:
        """Where a dataset's stage outputs live: the pretraining dataset's (`task` None) or task `task`'s."""
        if task is None:
            return DatasetOutputs(self.root / "artifacts", self.metrics_dir, self.root / "plots")
        names = self.config("tasks").names()
        if task not in names:
            raise SslopsError(f"unknown task '{task}': params.yaml's tasks are {', '.join(names)}.")
        sub = Path("tasks") / task
        return DatasetOutputs(self.root / "artifacts" / sub, self.metrics_dir / sub, self.root / "plots" / sub)

    def orphaned_outputs(self) -> list[Path]:
        """Output folders of tasks that params.yaml no longer lists (`tasks/<name>` under artifacts/, metrics/ and
        plots/): DVC forgets a removed task's stages but leaves their files, which `dvc metrics show` still reads."""
        names = set(self.config("tasks").names())
        found = [self.root / top / "tasks" for top in ("artifacts", "metrics", "plots")]
        return sorted(d for folder in found if folder.is_dir() for d in folder.iterdir() if d.name not in names)

    @property
    def prepared_dir(self) -> Path:
        """The pretraining dataset's store."""
        return self.outputs().prepared

    @property
    def validated_marker(self) -> Path:
        return self.outputs().validated_marker

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def model_name(self) -> str:
        """The registered model of this pipeline: `register.model_name` scoped by the pretraining dataset's name, so
        each dataset has its own versions and champion and no encoder is compared with another dataset's."""
        return f"{self.config('register').model_name}-{self.config('prepare').name}"

    def register_record(self) -> dict[str, Any]:
        """metrics/register.json (in git): the version this project's register stage registered, with its sha256s.

        Empty when the stage has not run or the file is unreadable; consumers compare the registry against it.
        """
        try:
            record = json.loads((self.metrics_dir / "register.json").read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}
