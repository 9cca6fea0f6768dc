"""Lineage facts about the code and data a run used: git commit, dirty flag, DVC hashes, params hash.

Plain Python (git through subprocess, DVC files through `sslops.adapters.dvcmeta`), so the same facts can be
attached to MLflow runs, Prefect artifacts or printed by `sslops lineage`.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from sslops.adapters import dvcmeta
from sslops.config import params_hash

PIPELINE_WRITES = ("dvc.lock", "metrics", "plots")
TASK_PREFIXED = ("prepare", "validate")  # their task stages are `task_prepare@<task>`: the plain names are taken
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/sslops (or site-packages/sslops)


def file_digest(path: Path, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in blocks (data files, checkpoints)."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_digest(package: Path = PACKAGE_DIR) -> str:
    """sha256 over the path and bytes of every Python file of the sslops package as it runs now.

    Unlike the md5s in dvc.lock (written after a stage finishes), this is the code of the current run, so a
    checkpoint of older code is never resumed into a new result.
    """
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit sha, dirty?) of the repository at `root`; (None, None) outside git."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    # "Dirty" means edited code, params or pipeline: files DVC rewrites while a pipeline runs
    # (dvc.lock, metrics, plots) would otherwise flag every stage after the first as dirty.
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{p}" for p in PIPELINE_WRITES))
    return commit, bool(status)


def dvc_stage(stage: str, task: str | None = None) -> str:
    """The stage's name in dvc.yaml/dvc.lock: `prepare`, or for a task `task_prepare@digits`, `finetune@digits`."""
    if task is None:
        return stage
    return f"{'task_' if stage in TASK_PREFIXED else ''}{stage}@{task}"


def lineage_tags(root: Path, stage: str, stage_params: dict[str, Any], task: str | None = None) -> dict[str, str]:
    """The tags every stage run carries (README, Tracking and lineage); dvc.lock's md5s of the stage's own deps
    name the exact data it read (`dvc.dep.data/digits`), not only data.dvc's folder-wide md5."""
    commit, dirty = git_state(root)
    tags = {
        "sslops.stage": stage,
        **({"sslops.task": task} if task else {}),
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if dirty is None else str(dirty).lower(),
        "data.dvc_md5": dvcmeta.data_md5(root) or "untracked",
        "params.hash": params_hash(stage_params),
    }
    name = dvc_stage(stage, task)
    locked = dvcmeta.stage_md5(root, name)
    if locked:
        tags["dvc.stage_md5"] = locked
    for dep, md5 in dvcmeta.upstream_md5s(root, name).items():
        tags[f"dvc.dep.{dep}"] = md5
    return tags
