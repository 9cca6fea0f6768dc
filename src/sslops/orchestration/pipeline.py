"""What the pipeline is, read from DVC's own index of dvc.yaml: the stages in run order, and their uncached outputs.

DVC 3.67.1's `dvc dag` prints the graph only as text for people and drawing tools (`--dot`, `--mermaid`, `--md`;
no `--json`), and the documented Python API (`dvc.api`) has no pipeline graph. `dvc dag` draws
`dvc.repo.Repo(root).index.graph`, so we read that graph directly: the stages DVC resolved (foreach/matrix
expanded, `${...}` interpolated, nested dvc.yaml files included) and the edges DVC derived from their deps and
outs, with no text format or second parser of dvc.yaml in between. `Repo` is DVC's main class (what `dvc.api`
and DVC's own commands build on) rather than part of `dvc.api`, so it is imported here and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sslops.errors import SslopsError

if TYPE_CHECKING:
    from dvc.repo.index import Index
    from dvc.stage import PipelineStage


@contextmanager
def _index(root: Path) -> Iterator[Index]:
    """DVC's index of the project at `root`. DVC's errors while reading it (a dvc.yaml it cannot load, a cyclic
    pipeline, an output declared twice) become an SslopsError naming the project."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(os.fspath(root)) as repo:
            yield repo.index  # loaded lazily, by the caller's block: its DVC errors arrive at this yield
    except DvcException as exc:
        raise SslopsError(f"DVC cannot read the pipeline in {root}: {exc}") from None


def stage_order(root: Path) -> list[str]:
    """The pipeline's stages (DVC addresses, as `dvc repro` takes them) in an order DVC would run them.

    `.dvc` files (tracked data) are inputs, not stages to run. Ties keep the order DVC lists the stages in,
    which follows dvc.yaml.
    """
    return [name for name, _ in _walk(root, with_status=False)]


def stages_to_run(root: Path) -> list[str]:
    """The stages a `dvc repro` would run now, in run order: those DVC finds changed since dvc.lock (each stage's own
    `dvc status`: deps, outs, params, command) and every stage downstream of one, whose inputs will change. An
    upper bound: DVC restores a stage from its run cache instead when it ran with these inputs before."""
    runs: list[str] = []
    for name, (changed, upstream) in _walk(root, with_status=True):
        if changed or upstream & set(runs):
            runs.append(name)
    return runs


def _walk(root: Path, with_status: bool) -> list[tuple[str, tuple[bool, set[str]]]]:
    """(stage, (changed since dvc.lock, the stages it takes outputs of)) in run order; `changed` is False unless
    `with_status` asks DVC."""
    from dvc.repo import lock_repo
    from dvc.stage import PipelineStage

    with _index(root) as index:
        graph = index.graph  # an edge runs from a stage to each stage that produces one of its deps
        names = {node: _address(node) for node in graph.nodes if isinstance(node, PipelineStage)}
        upstream = {names[node]: {names[dep] for dep in graph.successors(node) if dep in names} for node in names}
        changed = dict.fromkeys(names.values(), False)
        if with_status:
            with lock_repo(index.repo):  # what `dvc status` takes: a stage's status reads its outputs' state
                changed = {names[node]: bool(node.status()) for node in names}
    stages = list(names.values())
    order: list[str] = []
    while len(order) < len(stages):  # no cycle to guard against: DVC refuses one when it builds the graph
        order.append(next(s for s in stages if s not in order and upstream[s] <= set(order)))
    return [(name, (changed[name], upstream[name])) for name in order]


def _address(stage: PipelineStage) -> str:
    """The stage as `dvc repro` in `root` names it: `name`, or `sub/dvc.yaml:name` for a nested dvc.yaml.

    DVC's own `stage.addressing` is relative to this process's working directory, which need not be the project.
    """
    from dvc.dvcfile import PROJECT_FILE

    return stage.name if stage.path_in_repo == PROJECT_FILE else f"{stage.path_in_repo}:{stage.name}"


def uncached_outputs(root: Path) -> list[str]:
    """Stage outputs declared with `cache: false` (metrics, plots) that exist now, relative to `root`."""
    with _index(root) as index:
        return [
            os.path.relpath(out.fs_path, root)
            for stage in index.stages
            for out in stage.outs
            if not out.use_cache and out.exists
        ]
