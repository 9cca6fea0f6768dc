"""Turn a raw params.yaml section into its typed config, or into one error message a person can act on.

Each problem is named by its full key, the value found and what is allowed, e.g.
`pretrain.images in params.yaml: must be greater than 0, got 0`, all problems of a section at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from functools import cache
from typing import Any, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from sslops.config.schema import SECTIONS, PretrainParams, Section
from sslops.errors import SslopsError

PROFILE, PROFILES = "profile", "profiles"
REWORDED = {"Input should be": "must be", "String should": "must"}  # pydantic's phrasing, as a rule about the key


def resolve_profile(raw: dict[str, Any]) -> dict[str, Any]:
    """`pretrain:` with the selected profile (`pretrain.profile`) merged over it, `profiles` removed.

    Mappings merge one level deep (`backbone: {name: resnet18}` keeps the other backbone keys); other values replace.
    """
    name, profiles = raw.get(PROFILE), raw.get(PROFILES)
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) or p is None for p in profiles.values()):
        raise SslopsError(f"pretrain.{PROFILES} in params.yaml must map profile names to mappings of overrides.")
    if not isinstance(name, str) or name not in profiles:
        raise SslopsError(
            f"pretrain.{PROFILE} in params.yaml: '{name}' is not one of pretrain.{PROFILES}: "
            f"{', '.join(map(str, profiles)) or 'none'}."
        )
    merged = {k: v for k, v in raw.items() if k != PROFILES}
    for key, value in (profiles[name] or {}).items():
        base = merged.get(key)
        merged[key] = {**base, **value} if isinstance(value, dict) and isinstance(base, dict) else value
    return merged


def parse_section(name: str, raw: dict[str, Any], source: str = "params.yaml") -> Section:
    """Validate section `name`; the pretrain section is validated once per profile, so no profile hides an error."""
    model = SECTIONS[name]
    if name != "pretrain":
        return _validate(model, raw, name, source)
    profiles = raw.get(PROFILES) if isinstance(raw.get(PROFILES), dict) else {}
    named = {p: p if profiles.get(p) else None for p in profiles}  # an empty profile changes nothing worth naming
    selected = _validate(model, resolve_profile(raw), name, source, named.get(raw.get(PROFILE)))
    for profile in profiles:
        if profile != raw.get(PROFILE):
            _validate(model, resolve_profile({**raw, PROFILE: profile}), name, source, named[profile])
    return selected


def _validate(
    model: type[Section], values: dict[str, Any], name: str, source: str, profile: str | None = None
) -> Section:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        where = f" (with pretrain.profiles.{profile} merged in)" if profile else ""
        problems = [_describe(model, err, name, source) + where for err in exc.errors()]
        raise SslopsError("\n".join(problems)) from None


def method_knobs(
    cfg: PretrainParams, registry: Mapping[str, type], method: str | None = None, source: str = "params.yaml"
) -> Any:
    """The knobs of the method that runs (or of `method`), as its dataclass from the ML core, after checking every
    method's knobs under `pretrain:` against the declarations `registry` maps method names to (the methods' own
    dataclasses: field types with their ranges, checks across knobs in `__post_init__`). All problems at once, each
    named by its key.
    """
    if cfg.method not in registry:
        raise SslopsError(f"pretrain.method in {source}: '{cfg.method}' is not a method (one of {', '.join(registry)})")
    problems, built = [], {}
    for name, raw in cfg.knobs.items():
        if name not in registry:
            known = [*(f for f in PretrainParams.model_fields if f != "knobs"), *registry]
            problems.append(f"pretrain.{name} in {source}: unknown key (known: {', '.join(known)})")
            continue
        model = knobs_model(registry[name])
        try:  # through JSON, strictly: no string passes for a number, a YAML list is a JSON array for a pair
            values = model.model_validate_json(json.dumps(raw, default=str), strict=True)
            built[name] = registry[name](**dict(values))
        except ValidationError as exc:
            problems += [_describe(model, err, f"pretrain.{name}", source) for err in exc.errors()]
        except ValueError as exc:  # a check across knobs
            problems.append(f"pretrain.{name} in {source}: {exc}")
    if problems:
        raise SslopsError("\n".join(problems))
    return built[method or cfg.method]


@cache
def knobs_model(declaration: type) -> type[BaseModel]:
    """A pydantic model of a method's knobs dataclass: its fields, types and ranges, unknown keys refused."""
    hints = get_type_hints(declaration, include_extras=True)
    config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    return create_model(
        declaration.__name__, __config__=config, **{f.name: (hints[f.name], ...) for f in fields(declaration)}
    )


def _describe(model: type[BaseModel], err: Any, section: str, source: str) -> str:
    loc = [str(part) for part in err["loc"]]
    key = ".".join([section, *loc])
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        known = _fields_at(model, err["loc"][:-1])
        if model is PretrainParams and len(loc) == 1:  # `knobs` is where the methods' mappings are gathered
            known = [*(k for k in known if k != "knobs"), "or a mapping of a method's knobs"]
        return f"{key} in {source}: unknown key (known: {', '.join(known)})"
    if kind == "missing":
        return f"{key} in {source}: missing; every knob needs a value in {source} (the only place defaults live)"
    message = err["msg"].removeprefix("Value error, ")
    for said, meant in REWORDED.items():
        message = message.replace(said, meant, 1)
    if isinstance(value, dict):  # a check across keys: its message names what is wrong, a dump of them would not
        return f"{key} in {source}: {message}"
    if kind == "float_type" and isinstance(value, str) and "e" in value.lower() and _is_number(value):
        message += " (YAML reads a number in e-notation without a dot as text: write 2.0e-1, not 2e-1)"
    return f"{key} in {source}: {message}, got {value!r}"


def _is_number(text: str) -> bool:
    """Whether a string that PyYAML left as text is a number Python reads (YAML 1.1 wants a dot in `1.0e-4`)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at `loc`, for 'unknown key' messages."""
    parts = list(loc)
    while parts:
        part = str(parts.pop(0))
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if get_origin(annotation) is dict and parts:  # a mapping by name (finetune.trials): its values' model
            annotation, parts = get_args(annotation)[1], parts[1:]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
