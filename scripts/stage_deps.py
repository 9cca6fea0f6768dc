"""Each dvc.yaml stage's code deps, generated from the import graph, so DVC reruns a stage exactly when code it runs
changes: not when unrelated code does (a dep too many), and never misses a change (a dep too few).

    python scripts/stage_deps.py           # rewrite the src/sslops deps of every stage in dvc.yaml (comments kept)
    python scripts/stage_deps.py --check   # write nothing; exit 1 naming the stages whose deps are stale

What `python -m sslops <stage>` runs: __main__, the CLI's module-level imports and its stage-running functions, and
every module the stage's module reaches through imports (also those inside functions, which run when the stage does;
`if TYPE_CHECKING:` blocks are skipped), each with its parent packages' __init__. A package folder all of whose
files a stage runs is listed as the folder. Other deps (data folders, vendor files) are kept as written, first.
tests/test_architecture.py reads the same graph and fails while dvc.yaml is stale.

Only the standard library and ruamel.yaml (installed with sslops): imports are read from the source, not run.
"""

from __future__ import annotations

import argparse
import ast
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "sslops"
CODE = "src/sslops"
DENSE = "sslops.stages.dense"  # the task stages of detection and segmentation tasks (the CLI picks it by kind)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported(node: ast.AST) -> set[str]:
    """The modules imported anywhere under `node`: `from a import b` yields a.b when that is a module, else a."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            modules = [s for s in subs if s.startswith("sslops.") and module_file(s)]
            found.update(modules or [node.module])
            if len(modules) < len(subs):
                found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(node)
    return found


@cache
def imports(path: Path) -> frozenset[str]:
    """Every module `path` imports at run time (also inside functions)."""
    return frozenset(imported(ast.parse(path.read_text())))


def sslops_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def closure(start: str) -> set[Path]:
    """The files of every sslops module `start` reaches through imports, itself included."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += [m for m in imports(path) if m.startswith("sslops")]
        name = module_name(path)
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]  # parent packages run first
    return seen


def entry_files(stages: list[str]) -> set[Path]:
    """What `python -m sslops <stage>` runs around any stage: __main__, the CLI's module-level imports and those of
    the functions that run a stage (`_run_stage`, `_stage_runner` minus the stage modules), not the other commands'."""
    cli = PACKAGE / "cli.py"
    tree = ast.parse(cli.read_text())
    used = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    used += [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("_run_stage", "_stage_runner")]
    names = {m for node in used for m in imported(node) if m.startswith("sslops.")}
    files = {PACKAGE / "__main__.py", cli}
    for name in names - {f"sslops.stages.{s}" for s in stages} - {DENSE}:
        files |= closure(name)
    return files


def stage_of(cmd: str) -> str:
    if not cmd.startswith("python -m sslops "):
        raise ValueError(f"unexpected stage command {cmd!r}: expected python -m sslops <stage>")
    return cmd.split()[3]


def needed(cmd: str, stages: list[str]) -> list[str]:
    """The source files `cmd` (`python -m sslops <stage> ...`) runs, relative to the repository: a task's stage
    (`--task`) also runs the dense module's, for a detection or segmentation task."""
    files = closure(f"sslops.stages.{stage_of(cmd)}") | entry_files(stages)
    if "--task" in cmd.split():
        files |= closure(DENSE)
    return sorted(str(p.relative_to(REPO)) for p in files)


def compact(files: list[str]) -> list[str]:
    """`files` with each package folder (below src/sslops) whose every .py file is in it listed as the folder."""
    chosen = set(files)
    out: list[str] = []
    for path in sorted(chosen):
        parts = Path(path).parts
        folder = next(
            (
                Path(*parts[:i])
                for i in range(3, len(parts))
                if (REPO / Path(*parts[:i]) / "__init__.py").is_file()
                and {str(p.relative_to(REPO)) for p in (REPO / Path(*parts[:i])).rglob("*.py")} <= chosen
            ),
            None,
        )
        entry = str(folder) if folder else path
        if entry not in out:
            out.append(entry)
    return out


def _stages(dvc: dict) -> dict[str, dict]:
    """The stage bodies that hold `cmd` and `deps` (a foreach stage's `do:`)."""
    return {name: stage.get("do", stage) for name, stage in dvc["stages"].items()}


def generated(dvc: dict) -> dict[str, list[str]]:
    """Stage -> its deps: the ones that are not sslops code as written, then the code deps from the imports."""
    bodies = _stages(dvc)
    names = [stage_of(body["cmd"]) for body in bodies.values()]
    out = {}
    for name, body in bodies.items():
        kept = [d for d in body.get("deps", []) if not (isinstance(d, str) and d.startswith(CODE))]
        out[name] = kept + compact(needed(body["cmd"], names))
    return out


def main(argv: list[str] | None = None) -> int:
    from ruamel.yaml import YAML

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a stage's deps are stale")
    args = parser.parse_args(argv)
    yaml = YAML()  # round trip: comments, order and quoting kept
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = REPO / "dvc.yaml"
    dvc = yaml.load(path.read_text())
    stale = []
    for name, deps in generated(dvc).items():
        body = _stages(dvc)[name]
        if list(body.get("deps", [])) != deps:
            stale.append(name)
            body["deps"] = deps
    if args.check:
        if stale:
            print(f"dvc.yaml: stale code deps in {', '.join(stale)}: run python scripts/stage_deps.py", file=sys.stderr)
        return 1 if stale else 0
    if stale:
        with path.open("w") as out:
            yaml.dump(dvc, out)
    print(f"dvc.yaml: {'rewrote ' + ', '.join(stale) if stale else 'current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
