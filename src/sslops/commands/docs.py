"""`sslops docs`: the reference pages generated from the code, so that they cannot disagree with it.

docs/configuration.md lists every key of params.yaml: its type and allowed range from the typed schema
(`sslops.config.schema`), its default (params.yaml, the single home of defaults), the stages DVC reruns when it
changes (dvc.yaml's `params:`), and the line of meaning written beside it in params.yaml. docs/cli.md lists every
`sslops` command and option from the argument parser. `sslops docs --check` fails when either page is stale, and a
test runs it.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path
from typing import Any

import yaml

from sslops.config import Project
from sslops.config.reference import Key, keys_of, named_entries
from sslops.config.schema import SECTIONS
from sslops.ml.methods import METHOD_CONFIGS

CONFIGURATION = Path("docs") / "configuration.md"
CLI = Path("docs") / "cli.md"
WIDTH = 100  # columns of the generated help text, whatever the terminal that runs the generator


def yaml_comments(text: str) -> dict[str, str]:
    """{dotted key: the comment beside it in params.yaml, with its continuation lines}."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last: str | None = None
    for line in text.splitlines():
        code, _, comment = line.partition("#")
        key = re.match(r"^(\s*)([A-Za-z0-9_./-]+):", code)
        if key:
            indent = len(key.group(1))
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, key.group(2))]
            last = ".".join(k for _, k in stack)
            if comment.strip():
                comments[last] = comment.strip()
        elif not code.strip() and comment.strip() and last in comments and line.startswith(" "):
            comments[last] += " " + comment.strip()  # a continuation line, aligned under the comment
        else:
            last = None
    return comments


def rerun_by(dvc_yaml: dict[str, Any]) -> list[tuple[str, str]]:
    """(stage, dotted params key it depends on) for each stage of dvc.yaml; `foreach` stages as `NAME@*`, their
    keys with `${key}` for the task's name."""
    found = []
    for name, stage in dvc_yaml["stages"].items():
        label = f"{name}@*" if "foreach" in stage else name
        for param in stage.get("do", stage).get("params", []):
            found.append((label, param if isinstance(param, str) else next(iter(param))))
    return found


def _depends(key: str, dep: str) -> bool:
    """Whether a stage that depends on params key `dep` reruns when `key` changes: one lies within the other."""
    return all(d in (k, "${key}") for k, d in zip(key.split("."), dep.split("."), strict=False))


def _stages(key: str, deps: list[tuple[str, str]]) -> str:
    names = list(dict.fromkeys(stage for stage, dep in deps if _depends(key, dep)))
    return ", ".join(f"`{n}`" for n in names) or "none"


def _default(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return f"`{text}`" if len(text) <= 40 else "(see params.yaml)"


def _rows(model: type | None, values: dict[str, Any], prefix: str, ctx: dict[str, Any]) -> list[str]:
    """Table rows for the keys of `values` (params.yaml) under `prefix`, typed by `model`'s keys."""
    rows = []
    keys = keys_of(model) if model is not None else {}
    for name, value in values.items():
        path, key = f"{prefix}.{name}", keys.get(name)
        if prefix == "pretrain" and name in METHOD_CONFIGS:  # a method's knobs, declared in its own file
            key = Key("mapping", METHOD_CONFIGS[name], "")
        kind = key.kind if key else "mapping (merged over `pretrain`)"
        if path == "pretrain.method":  # checked against the methods' registry, not the schema
            kind = " | ".join(json.dumps(m) for m in METHOD_CONFIGS)
        shown = "" if isinstance(value, dict) and (key is None or key.section) else _default(value)
        meaning = ctx["comments"].get(path) or (key.comment if key else "")
        method = name if prefix == "pretrain" else prefix.removeprefix("pretrain.")
        if not meaning and method in METHOD_CONFIGS:  # the methods' knobs are explained with the methods
            meaning = f"{'the knobs' if method == name else 'a knob'} of `{method}` ([methods.md](methods.md))"
        cells = [f"`{path}`", kind, shown, _stages(path, ctx["deps"]), meaning]
        rows.append("| " + " | ".join(re.sub(r"(?<!\\)\|", r"\|", c) for c in cells) + " |")  # a | ends a cell
        if key and key.section and isinstance(value, dict):
            rows += _rows(key.section, value, path, ctx)
    return rows


def configuration_markdown(project: Project) -> str:
    """docs/configuration.md: one table per params.yaml section."""
    text, params = project.params_file.read_text(), project.params
    ctx = {
        "comments": yaml_comments(text),
        "deps": rerun_by(yaml.safe_load((project.root / "dvc.yaml").read_text())),
    }
    out = [
        "# Configuration reference",
        "",
        "<!-- generated by `sslops docs` from params.yaml, src/sslops/config/schema.py and dvc.yaml; do not edit -->",
        "",
        "Every knob is in `params.yaml`, grouped by stage; its values there are the defaults. Try one without editing",
        "the file: `dvc exp run -S pretrain.images=1200000`. *Reruns*: the stages DVC runs again when the key changes",
        "(`NAME@*`: the stage of each task). Every value is checked before a stage starts; a wrong one fails naming",
        "its key.",
    ]
    for section, model in SECTIONS.items():
        out += ["", f"## `{section}`", ""]
        if ctx["comments"].get(section):
            out += [ctx["comments"][section], ""]
        out += ["| key | type | default | reruns | meaning |", "|---|---|---|---|---|"]
        values, entry = params[section], named_entries(model)
        if entry is not None:  # tasks: a mapping of task names, each a section
            for name, task in values.items():
                out += _rows(entry, task, f"{section}.{name}", ctx)
        else:
            out += _rows(model, values, section, ctx)
    return "\n".join(out) + "\n"


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """docs/cli.md: the help of `sslops` and of each of its commands."""
    width = functools.partial(argparse.HelpFormatter, width=WIDTH)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = [
        "# Command line reference",
        "",
        "<!-- generated by `sslops docs` from the argument parser (src/sslops/cli.py); do not edit -->",
        "",
        (
            "`sslops <command>` (or `python -m sslops <command>`) from the project's folder; `make run` sets up "
            "`.venv` and the data, then runs `sslops repro` and `sslops report`."
        ),
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    out += [f"| [`{c.dest}`](#sslops-{c.dest}) | {c.help} |" for c in subparsers._choices_actions]
    for name, sub in subparsers.choices.items():
        sub.formatter_class = width
        out += ["", f"## sslops {name}", "", "```", sub.format_help().rstrip(), "```"]
    return "\n".join(out) + "\n"


def write_or_check(root: Path, pages: dict[Path, str], check: bool) -> list[Path]:
    """Write each generated page (or, with `check`, write nothing); returns the pages that were stale."""
    stale = [path for path, text in pages.items() if not (root / path).is_file() or (root / path).read_text() != text]
    if not check:
        for path in stale:
            (root / path).write_text(pages[path])
    return stale
