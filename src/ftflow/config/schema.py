"""Pass 1: the JSON schema (unknown keys are errors), with its defaults filled in."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ftflow.config.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"
# The schema ships inside the repository; an installed copy of the package finds it
# through the working directory instead.


def load_schema(path: Path | None = None) -> dict:
    """The schema, a fresh copy each call (parsed once per file version)."""
    path = Path(path or _schema_path()).resolve()
    stat = path.stat()
    return copy.deepcopy(_parse_schema(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _parse_schema(path: str, mtime_ns: int, size: int) -> dict:
    # libyaml's parser when PyYAML has it: the same safe loading, ~0.1 s less per
    # snakemake start (the schema is long).
    with open(path) as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _schema_path() -> Path:
    if SCHEMA_PATH.exists():
        return SCHEMA_PATH
    candidate = Path.cwd() / "workflow" / "schemas" / "config.schema.yaml"
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"config schema not found at {SCHEMA_PATH} or {candidate}")


def _key_path(parts: Any) -> str:
    return (
        ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts).replace(".[", "[")
        or "(top level)"
    )


def _describe(error: jsonschema.ValidationError) -> str:
    """Turn a jsonschema error into 'config key X: problem (allowed: ...)'."""
    where = _key_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(f"{where}.{k}" if where != "(top level)" else k for k in extra)
        return f"unknown config key {keys} (allowed here: {', '.join(allowed)})"
    if error.validator == "enum":
        return (
            f"config key {where}: {error.instance!r} is not allowed (allowed: "
            + ", ".join(map(str, error.validator_value))
            + ")"
        )
    if error.validator == "required":
        return f"config key {where}: {error.message}"
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        shapes = []
        for option in error.validator_value:
            option = _resolve_ref(option, error)
            shapes.append("{" + ", ".join(option.get("required", [])) + "}")
        return (
            f"config key {where}: {sorted(error.instance)} does not match any allowed form "
            f"(allowed: one of {' | '.join(shapes)})"
        )
    if error.validator == "pattern":
        hint = schema.get("description", f"pattern {error.validator_value}")
        return f"config key {where}: {error.instance!r} is not valid ({hint})"
    if error.validator == "propertyNames":
        return f"config key {where}: name {error.instance!r} is not valid ({error.message})"
    return f"config key {where}: {error.message}"


def _resolve_ref(option: dict, error: jsonschema.ValidationError) -> dict:
    ref = option.get("$ref")
    if not ref:
        return option
    node: Any = load_schema()
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _with_defaults(validator_class: type) -> type:
    """A validator that fills in ``default`` values while validating (as snakemake does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_schema(config: dict, schema: dict | None = None) -> dict:
    """Validate against the JSON schema, fill defaults; return the (mutated) config."""
    schema = schema or load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_describe(best))
    _with_defaults(jsonschema.Draft202012Validator)(schema).validate(config)
    return config


def validate_schema_fragment(value: dict, name: str) -> dict:
    """Fill the defaults of one named method sub-object (e.g. ``lora``)."""
    schema = load_schema()
    fragment = schema["properties"]["methods"]["additionalProperties"]["properties"][name]
    _with_defaults(jsonschema.Draft202012Validator)(fragment).validate(value)
    return value
