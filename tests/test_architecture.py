"""The architecture as tests: layers import downwards only, each MLOps tool has one adapter, and every dvc.yaml
stage lists as deps exactly the sslops modules its command runs (generated from the import graph by
scripts/stage_deps.py, docs/architecture.md).

Imports are read from the source (every `import` statement, also those inside functions, which run when the
stage does; `if TYPE_CHECKING:` blocks are skipped), so the tests need none of the heavy packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import stage_deps as graph  # noqa: E402  (the import graph, beside the generator of dvc.yaml's deps)
from stage_deps import PACKAGE, imports, sslops_modules  # noqa: E402

# Bottom to top. A module may import sslops modules of its own layer and of the layers below it only.
LAYERS = [
    ("base", ("sslops.errors", "sslops.env", "sslops.outputs", "sslops.pipeline_lock")),
    ("core", ("sslops.data", "sslops.ml")),
    ("config", ("sslops.config",)),
    ("adapters", ("sslops.adapters",)),
    ("stages", ("sslops.stages",)),
    ("commands", ("sslops.commands",)),
    ("orchestration", ("sslops.orchestration",)),
    ("cli", ("sslops.cli", "sslops.__main__")),
]
# A module may import its own layer, except these (stages are independent of each other).
NO_SIBLING_IMPORTS = {"stages"}
# Third-party packages that only one place may import.
OWNERS = {
    "mlflow": ("sslops.adapters.tracking",),
    "great_expectations": ("sslops.adapters.expectations",),
    "prefect": (),  # only flows/, outside the package
    "pydantic": ("sslops.config",),
    "dvc": ("sslops.orchestration",),
}
MLOPS = ("mlflow", "great_expectations", "prefect", "dvc", "pydantic", "yaml")


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")


def test_every_module_is_in_a_layer_and_imports_downwards_only() -> None:
    problems = []
    for name, path in sslops_modules().items():
        if name == "sslops":
            continue
        own = layer_of(name)
        for target in (m for m in imports(path) if m.startswith("sslops.")):
            there = layer_of(target)
            same_package = target.split(".")[:3] == name.split(".")[:3]
            if there > own or (there == own and LAYERS[own][0] in NO_SIBLING_IMPORTS and not same_package):
                problems.append(f"{name} ({LAYERS[own][0]}) imports {target} ({LAYERS[there][0]})")
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


@pytest.mark.parametrize("package", OWNERS)
def test_each_mlops_package_is_imported_by_its_adapter_only(package: str) -> None:
    owners = OWNERS[package]
    offenders = sorted(
        name
        for name, path in sslops_modules().items()
        if any(m == package or m.startswith(package + ".") for m in imports(path))
        and not any(name == o or name.startswith(o + ".") for o in owners)
    )
    assert not offenders, f"{package} imported outside {owners or 'flows/'}: {offenders}"


# What the ML core may import besides the standard library and sslops' base and core: an allowlist, so anything
# new (an MLOps client, a config library) is a decision, not an accident.
CORE_ALLOWED = {
    # the last two: range markers (plain data); COCO mAP (torch-based metrics, pycocotools under it)
    "sslops.ml": {"torch", "torchvision", "numpy", "tqdm", "annotated_types", "torchmetrics"},
    # pyarrow: pandas' Parquet engine, used directly to write the manifest in row groups
    "sslops.data": {"numpy", "pandas", "pyarrow", "PIL", "tqdm"},
}


def test_ml_core_imports_only_its_allowlist() -> None:
    offenders = {}
    for name, path in sslops_modules().items():
        package = next((p for p in CORE_ALLOWED if name == p or name.startswith(p + ".")), None)
        if package is None:
            continue
        bad = {
            m
            for m in imports(path)
            if m.split(".")[0] not in sys.stdlib_module_names
            and m.split(".")[0] not in CORE_ALLOWED[package]
            and not (m.startswith("sslops.") and layer_of(m) <= layer_of(name))
        }
        if bad:
            offenders[name] = sorted(bad)
    assert not offenders, f"the ML core imports outside its allowlist: {offenders}"
    assert all(m.split(".")[0] not in CORE_ALLOWED["sslops.ml"] for m in MLOPS)  # the list is not too wide


def test_loading_a_config_imports_no_torch() -> None:
    """The config layer knows the methods' knobs by name only (their declarations are in the ML core, checked where
    the method is built): a stage that reads its params pays no torch import, and its deps stay its own code."""
    code = "import sys, sslops.config.validation, sslops.config.reference; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_only_flows_import_prefect() -> None:
    flows = {p for p in (REPO / "flows").glob("*.py") if any(m.startswith("prefect") for m in imports(p))}
    assert flows, "flows/ no longer imports prefect: update OWNERS"
    others = [
        p
        for p in (*PACKAGE.rglob("*.py"), *(REPO / "bench").glob("*.py"))
        if any(m.split(".")[0] == "prefect" for m in imports(p))
    ]
    assert not others


def test_orchestration_imports_neither_the_cli_nor_stages_nor_commands() -> None:
    """It drives the stages through DVC, in child processes: importing them (or the CLI) would load their imports
    into the flow's process and couple the scheduler to stage code."""
    forbidden = ("sslops.cli", "sslops.stages", "sslops.commands")
    offenders = {
        name: sorted(m for m in imports(path) if m.startswith(forbidden))
        for name, path in sslops_modules().items()
        if name.startswith("sslops.orchestration")
    }
    assert not {n: m for n, m in offenders.items() if m}


def stage_deps() -> dict[str, tuple[str, list[str]]]:
    """(cmd, deps) per dvc.yaml stage; a foreach stage's template (`do:`) stands for all of its tasks."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {
        name: (
            s.get("do", s)["cmd"],
            [d if isinstance(d, str) else next(iter(d)) for d in s.get("do", s).get("deps", [])],
        )
        for name, s in stages.items()
    }


def missing_deps(cmd: str, deps: list[str]) -> list[str]:
    """Files of sslops modules that `python -m sslops <stage>` runs and no dep of the stage covers."""
    names = [graph.stage_of(c) for c, _ in stage_deps().values()]
    return [f for f in graph.needed(cmd, names) if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]


def test_a_stage_runs_the_code_of_the_project_it_runs_in(tmp_path: Path) -> None:
    """As in a DVC experiment's copy of the project: its own src/sslops runs, not the installed checkout's, whose
    code may have changed since the experiment was queued (the copy's src/ is what DVC records as the deps)."""
    copy = tmp_path / "src" / "sslops"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "cli.py").write_text("import sslops\n\n\ndef main():\n    print('cli of', sslops.__file__)\n    return 0\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SSLOPS_OWN_CODE", "PYTHONPATH")}
    out = subprocess.run(
        [sys.executable, "-m", "sslops", "prepare"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"cli of {copy / '__init__.py'}" and not out.stderr  # errors stay the first line


@pytest.mark.parametrize("stage", list(stage_deps()))
def test_each_stage_depends_on_the_code_it_runs(stage: str) -> None:
    cmd, deps = stage_deps()[stage]
    missing = missing_deps(cmd, deps)
    assert not missing, f"dvc.yaml stage {stage} runs code it does not list as deps: {missing}"


def test_dvc_yaml_lists_exactly_the_generated_code_deps() -> None:
    """No dep too many either: a stage that lists code it does not run reruns for nothing (the generator's output,
    `python scripts/stage_deps.py`, is what dvc.yaml holds)."""
    stale = {
        name: deps
        for name, deps in graph.generated(yaml.safe_load((REPO / "dvc.yaml").read_text())).items()
        if deps != stage_deps()[name][1]
    }
    assert not stale, f"dvc.yaml's code deps are stale in {', '.join(stale)}: run python scripts/stage_deps.py"
    assert graph.compact(["src/sslops/ml/methods/base.py"]) == ["src/sslops/ml/methods/base.py"]  # one file of many
    every = sorted(str(f.relative_to(REPO)) for f in (PACKAGE / "ml" / "methods").glob("*.py"))
    assert graph.compact(every) == ["src/sslops/ml/methods"]


def test_the_dep_check_sees_a_new_import(tmp_path: Path) -> None:
    """The check above is only as good as the import graph: a dep list without a module the stage imports fails."""
    cmd, deps = stage_deps()["register"]
    assert not missing_deps(cmd, deps)
    assert "src/sslops/ml/models.py" in missing_deps(cmd, [d for d in deps if not d.startswith("src/sslops/ml")])
