"""Ad-hoc params.yaml overrides for one flow run, applied by the rules of `dvc exp run -S` and undone afterwards.

DVC 3.67.1 has no public way to only edit params: `dvc exp run -S` also runs the whole pipeline in one command
(the flow runs stages one by one), and the `-S` parser behind it lives in private modules (`dvc.utils.cli_parse`,
`dvc.utils.hydra`). The edit itself is small, since overrides arrive as JSON values rather than as strings to
parse: set keys that already exist (the `-S` rule, so a typo fails before any stage runs). It is done with
ruamel.yaml's round-trip mode, the library and mode DVC itself writes params files with, so comments and key
order stay. Going through JSON values also avoids two faults of the `-S` route (checked with DVC 3.67.1): a
non-ASCII string arrived as literal `\\u00e9` escapes, and a string like `off` was written bare, which the
stages' YAML 1.1 reader (PyYAML) loads as a bool.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sslops.config import flatten
from sslops.config.validation import parse_section
from sslops.errors import SslopsError
from sslops.outputs.atomic import atomic_file

PARAMS_FILE = "params.yaml"
BACKUP_DIR = Path(".dvc") / "tmp" / "sslops-params-backup"  # .dvc/tmp is DVC's own git-ignored scratch


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """`{"pretrain.images": 50}` as `dvc exp run -S` would take it (`pretrain.images=50`), for people to read.

    Nested mappings become dotted keys, because DVC's override grammar has no JSON objects.
    """
    return [f"{key}={json.dumps(value)}" for key, value in flatten(dict(overrides)).items()]


def check_overrides(path: Path, overrides: Mapping[str, Any]) -> None:
    """Refuse overrides that the stages would refuse, before params.yaml is touched: each key must exist, and each
    section they change must still validate (types, ranges) by the same rules the stages apply at their start.

    Whoever can reach the flow's API chooses the overrides, so nothing unchecked gets into params.yaml.
    """
    import yaml

    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    _set_keys(params, overrides, path, lambda value: value)
    for section in sorted({key.split(".")[0] for key in flatten(dict(overrides))}):
        try:
            parse_section(section, params[section], path.name)
        except SslopsError as exc:
            raise SslopsError(f"override refused, the stages would reject it: {exc}") from None


def _apply(path: Path, overrides: Mapping[str, Any]) -> None:
    """Set each dotted key of `overrides` (which must exist, down to list indices) in the YAML file `path`."""
    from ruamel.yaml import YAML

    # Round-trip mode, as DVC's modify_yaml: keeps comments, key order and quoting; it builds plain mappings,
    # sequences and scalars only (no Python objects from tags), like safe_load.
    round_trip = YAML(typ="rt")
    round_trip.default_flow_style = False
    data = round_trip.load(path.read_text(encoding="utf-8"))
    _set_keys(data, overrides, path, _quoted)
    with path.open("w", encoding="utf-8") as fh:
        round_trip.dump(data, fh)


def write_params(path: Path, updates: Mapping[str, Any], deletions: Sequence[str] = ()) -> None:
    """Set dotted keys in params.yaml (a key may be new when its parent mapping exists: a new task) and delete
    others, keeping comments, key order and `null`s elsewhere; the result must validate as the stages would
    validate it, or nothing is written. `sslops init` writes its proposal with this."""
    import yaml
    from ruamel.yaml import YAML

    round_trip = YAML(typ="rt")
    round_trip.default_flow_style = False
    round_trip.preserve_quotes = True  # `cron: "0 2 * * *"` stays quoted
    round_trip.width = 4096  # no rewrapping (a flow mapping written over two lines becomes one)
    round_trip.representer.add_representer(  # `null` written out, as people write it
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    data = round_trip.load(path.read_text(encoding="utf-8"))
    for key in [*updates, *deletions]:
        *parents, leaf = key.split(".")
        node = _node(data, parents)
        if key in updates:
            node[leaf] = _flow_lists(_quoted(updates[key]))
            continue
        del node[leaf]
        if not node and parents:  # ruamel writes an emptied block mapping as a stray `{}`: make it a flow one
            from ruamel.yaml.comments import CommentedMap

            empty = CommentedMap()
            empty.fa.set_flow_style()
            _node(data, parents[:-1])[parents[-1]] = empty
    text = io.StringIO()
    round_trip.dump(data, text)
    params = yaml.safe_load(text.getvalue())
    for section in sorted({key.split(".")[0] for key in [*updates, *deletions]}):
        parse_section(section, params[section], path.name)
    with atomic_file(path) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")


def _flow_lists(value: Any) -> Any:
    """Lists written on one line, `[a, b]`, as params.yaml writes them."""
    from ruamel.yaml.comments import CommentedSeq

    if isinstance(value, dict):
        return {key: _flow_lists(item) for key, item in value.items()}
    if isinstance(value, list):
        seq = CommentedSeq(_flow_lists(item) for item in value)
        seq.fa.set_flow_style()
        return seq
    return value


def _node(tree: Any, path: list[str]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set_keys(tree: Any, overrides: Mapping[str, Any], path: Path, convert: Callable[[Any], Any]) -> None:
    """Set each dotted key of `overrides` in the loaded YAML `tree` (the key must exist, down to list indices)."""
    for key, value in flatten(dict(overrides)).items():
        *parents, leaf = key.split(".")
        node = tree
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if isinstance(node, list):
                node[int(leaf)] = convert(value)
            elif isinstance(node, dict) and leaf in node:
                node[leaf] = convert(value)
            else:
                raise KeyError(leaf)
        except (KeyError, IndexError, ValueError, TypeError):
            raise SslopsError(
                f"cannot override '{key}': {path.name} has no such key (as with `dvc exp run -S`, "
                f"only keys that exist in {path.name} can be set)"
            ) from None


def _quoted(value: Any) -> Any:
    """`value` with its strings double-quoted, so that YAML 1.1 (PyYAML, the stages) and 1.2 (ruamel, DVC) both
    read them back as strings: bare, `off` or `12:30` would be a bool or a number to PyYAML."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if isinstance(value, str):
        return DoubleQuotedScalarString(value)
    if isinstance(value, list):
        return [_quoted(item) for item in value]
    if isinstance(value, dict):
        return {key: _quoted(item) for key, item in value.items()}
    return value


@contextlib.contextmanager
def overridden_params(root: Path, overrides: Mapping[str, Any], warn: Callable[[str], None]) -> Iterator[None]:
    """params.yaml with `overrides` applied for the duration of the block, then restored byte for byte.

    The original is also copied to .dvc/tmp, so a run killed mid-way is undone by the next run
    (which holds the project lock, so no other run can be using it).
    """
    backup = root / BACKUP_DIR
    _restore(root, backup, warn)
    if not overrides:
        yield
        return
    check_overrides(root / PARAMS_FILE, overrides)
    backup.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / PARAMS_FILE, backup / PARAMS_FILE)
    try:
        _apply(root / PARAMS_FILE, overrides)
        yield
    finally:
        _restore(root, backup)


def _restore(root: Path, backup: Path, warn: Callable[[str], None] | None = None) -> None:
    """Copy every backed-up params file back into the project and drop the backup."""
    if not backup.is_dir():
        return
    for saved in (p for p in backup.rglob("*") if p.is_file()):
        name = saved.relative_to(backup)
        if warn:
            warn(f"restoring {name}, left overridden by an interrupted run")
        shutil.copyfile(saved, root / name)
    shutil.rmtree(backup)
