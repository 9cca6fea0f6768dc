"""The typed schema read back as a reference: each key's type and range in words, and the comment beside it.

`sslops docs` writes docs/configuration.md from this, params.yaml and dvc.yaml; it lives here because only the
config package speaks pydantic.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, RootModel


@dataclass(frozen=True)
class Key:
    """One key of a params.yaml section as the schema declares it."""

    kind: str  # the type and its range in words
    section: type | None  # the model of a nested section (a mapping of keys), else None
    comment: str  # the comment beside the field in the schema's source


# What a validator function in a type accepts, said in words (the function's checks are in the schema).
VALIDATED = {"_budget": "a fraction in (0, 1] or `N/class`", "_budget_key": "`frac_<fraction>` or `per_class_<n>`"}


def _constraints(meta: list[Any]) -> tuple[dict[str, Any], str | None]:
    """Bounds, length and pattern limits, and a validator's description, from a type's metadata."""
    limits: dict[str, Any] = {}
    validated = None
    for item in meta:
        for name in ("gt", "ge", "lt", "le", "min_length", "pattern"):
            if getattr(item, name, None) is not None:
                limits[name] = getattr(item, name)
        inner, _ = _constraints(list(getattr(item, "metadata", [])))  # a Field(...) inside Annotated
        limits.update(inner)
        func = getattr(item, "func", None)
        if func is not None and func.__name__ in VALIDATED:
            validated = VALIDATED[func.__name__]
    return limits, validated


def _limits(text: str, limits: dict[str, Any]) -> str:
    """`text` with its limits: `float in [0, 1]`, `int > 0`, `non-empty str`, `list of str, at least 1`."""
    low = ("[", limits["ge"]) if "ge" in limits else ("(", limits["gt"]) if "gt" in limits else None
    high = (limits["le"], "]") if "le" in limits else (limits["lt"], ")") if "lt" in limits else None
    if low and high:
        text += f" in {low[0]}{low[1]}, {high[0]}{high[1]}"
    elif low:
        text += f" {'≥' if low[0] == '[' else '>'} {low[1]}"
    elif high:
        text += f" {'≤' if high[1] == ']' else '<'} {high[0]}"
    if limits.get("min_length"):
        text = "non-empty str" if text == "str" else f"{text}, at least {limits['min_length']}"
    if "pattern" in limits:
        text += f" matching `{limits['pattern']}`"
    return text


def describe(annotation: Any, meta: list[Any] | None = None) -> str:
    """A type of the schema in words: `int > 0`, `auto | bf16 | fp16 | off`, `list of str`, `[float, float]`."""
    meta = list(meta or [])
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *more = get_args(annotation)
        return describe(base, [*more, *meta])
    limits, validated = _constraints(meta)
    if validated:
        return validated
    if origin is Literal:
        text = " | ".join(json.dumps(v) if isinstance(v, str) else str(v) for v in get_args(annotation))
    elif origin in (Union, types.UnionType):
        text = " or ".join(describe(a) for a in get_args(annotation))
    elif origin is list:
        text = f"list of {describe(get_args(annotation)[0])}"
    elif origin is tuple:
        text = "[" + ", ".join(describe(a) for a in get_args(annotation)) + "]"
    elif origin is dict:
        text = f"mapping to {describe(get_args(annotation)[1])}"
    elif annotation is type(None):
        text = "null"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        text = "mapping"
    else:
        text = getattr(annotation, "__name__", str(annotation))
    return _limits(text, limits)


def schema_comments(model: type) -> dict[str, str]:
    """{field: the comment beside it in the schema's source}: the meaning of a key that params.yaml leaves bare."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^    (\w+): [^#\n]+#\s*(.+)$", source, re.M))


def keys_of(model: type) -> dict[str, Key]:
    """The keys of a section model (or of a method's knobs dataclass), each with its type in words, its nested
    section and the comment beside it in the source."""
    comments = schema_comments(model)
    if dataclasses.is_dataclass(model):
        hints = get_type_hints(model, include_extras=True)
        return {f.name: Key(describe(hints[f.name]), None, comments.get(f.name, "")) for f in dataclasses.fields(model)}
    keys = {}
    for name, field in model.model_fields.items():
        nested = (
            field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        )
        keys[name] = Key(describe(field.annotation, list(field.metadata)), nested, comments.get(name, ""))
    return keys


def named_entries(model: type) -> type | None:
    """The model of each entry of a section that maps names to sections (`tasks:`), else None."""
    if not (isinstance(model, type) and issubclass(model, RootModel)):
        return None
    mapping = model.model_fields["root"].annotation
    return get_args(get_args(mapping)[0] if get_origin(mapping) is Annotated else mapping)[1]
