"""The thin module through which sslops reads DVC's files (data.dvc, dvc.yaml, dvc.lock).

Stages only need hashes DVC has already computed, so this reads the YAML files directly instead of
importing DVC (which is slow to import and would tie stage code to DVC's internal API).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml


def _load(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def data_md5(root: Path, pointer: str = "data.dvc") -> str | None:
    """The md5 DVC recorded for the tracked data folder (`outs[0].md5` in data.dvc), or None."""
    outs = _load(root / pointer).get("outs") or [{}]
    return outs[0].get("md5")


def lock_entry(root: Path, stage: str) -> dict[str, Any] | None:
    """The stage's entry in dvc.lock, if the stage has completed under DVC before."""
    return (_load(root / "dvc.lock").get("stages") or {}).get(stage)


def stage_md5(root: Path, stage: str) -> str | None:
    """md5 of the stage's dvc.lock entry (cmd, deps, params and outs hashes), or None if not locked yet."""
    entry = lock_entry(root, stage)
    if entry is None:
        return None
    return hashlib.md5(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()


def upstream_md5s(root: Path, stage: str) -> dict[str, str]:
    """md5 of each dependency of `stage` that DVC already hashed: data.dvc or an upstream stage's out.

    Upstream stages finish before `stage` starts under `dvc repro`, so their dvc.lock entries are current.
    """
    stages = _load(root / "dvc.yaml").get("stages") or {}
    deps = [d if isinstance(d, str) else next(iter(d)) for d in (stages.get(stage) or {}).get("deps") or []]
    if not deps or any("${" in d for d in deps):
        # Templated in dvc.yaml (`${prepare.root}`, a foreach stage such as `finetune@digits`): the stage's last
        # lock entry names its deps as DVC resolved them.
        deps = [d["path"] for d in (lock_entry(root, stage) or {}).get("deps", [])]
    produced: dict[str, str] = {}
    for name, entry in (_load(root / "dvc.lock").get("stages") or {}).items():
        if name != stage:
            produced.update({o["path"]: o["md5"] for o in entry.get("outs", []) if "md5" in o})
    result = {}
    for dep in deps:
        for path, md5 in produced.items():
            if dep == path or dep.startswith(path.rstrip("/") + "/"):  # a file inside an upstream output folder
                result[dep] = md5
    # data.dvc's md5 covers the whole data/ folder: it names a dep only when the dep is that folder. A dataset
    # subfolder's own md5 is the `data.md5` tag (`dep_md5`), taken from the lock of the stage that read it.
    for out in _load(root / "data.dvc").get("outs") or []:
        if out.get("path") in deps and "md5" in out:
            result[out["path"]] = out["md5"]
    return result


def dep_md5(root: Path, stage: str, path: str) -> str | None:
    """The md5 dvc.lock records for dependency `path` of `stage` (e.g. `data/digits` of `task_prepare@digits`): the
    dataset's own hash, not data.dvc's folder-wide one. Current for any stage that finished before the caller."""
    for dep in (lock_entry(root, stage) or {}).get("deps", []):
        if dep.get("path") == path:
            return dep.get("md5")
    return None
