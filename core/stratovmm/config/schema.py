"""One JSON schema from the core's properties and every device type's fragment,
and validation errors turned into one line that names the option or key."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import jsonschema

from stratovmm.config.core_options import CORE_SCHEMA
from stratovmm.config.grammar import format_size
from stratovmm.errors import ConfigError
from stratovmm.registry import DeviceRegistry


def _is_integer(_checker: Any, instance: Any) -> bool:
    """JSON Schema counts ``2.0`` as an integer, but the VMM needs a Python ``int`` (a float
    vCPU count or RAM size would fail deep in the machine set-up with a traceback)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


def assemble(devices: DeviceRegistry) -> dict[str, Any]:
    """The whole config-file schema: core keys plus one key per device type."""
    properties = dict(CORE_SCHEMA)
    for device_type in devices.device_types.values():
        option = device_type.option
        item = dict(device_type.schema)
        properties[option.json_key] = (
            {"type": "array", "items": item} if option.repeatable else item
        )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


def _show(value: Any, schema: dict[str, Any]) -> str:
    if schema.get("x-unit") == "size" and isinstance(value, int) and not isinstance(value, bool):
        return format_size(value)
    return json.dumps(value)


_TYPE_NAMES = {"integer": "an integer", "string": "a string", "boolean": "a boolean (true/false)",
               "object": "an object", "array": "a list", "number": "a number"}


def describe(error: jsonschema.ValidationError) -> str:
    """A short reason for one schema violation."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    v, inst = error.validator, error.instance
    if "x-message" in schema and v in ("pattern", "format"):
        return f"{_show(inst, schema)} {schema['x-message']}"
    if v == "type":
        want = error.validator_value
        names = [want] if isinstance(want, str) else list(want)
        expected = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        return f"expected {expected}, got {json.dumps(inst)}"
    if v in ("minimum", "exclusiveMinimum"):
        return f"{_show(inst, schema)} is below the minimum {_show(error.validator_value, schema)}"
    if v in ("maximum", "exclusiveMaximum"):
        limit = _show(error.validator_value, schema)
        word = "the maximum" if v == "maximum" else "the limit (exclusive)"
        return f"{_show(inst, schema)} is above {word} {limit}"
    if v == "multipleOf":
        return f"{_show(inst, schema)} is not a multiple of {_show(error.validator_value, schema)}"
    if v == "additionalProperties":
        extra = sorted(set(inst) - set(schema.get("properties", {})))
        known = ", ".join(sorted(schema.get("properties", {})))
        return f"unknown key {', '.join(map(repr, extra))} (known: {known})"
    if v == "required":
        return f"missing required key {error.message.split(' ')[0]}"
    if v in ("enum", "const"):
        allowed = error.validator_value if v == "enum" else [error.validator_value]
        return f"{json.dumps(inst)} is not one of {', '.join(json.dumps(a) for a in allowed)}"
    if v in ("minLength",) and inst == "":
        return "must not be empty"
    return str(error.message)


def check(document: Any, schema: dict[str, Any],
          where: Callable[[Sequence[str | int]], str]) -> None:
    """Validate ``document``; raise ``ConfigError`` for the most relevant error.

    ``where(path)`` names the option or key at the JSON path of the error.
    """
    validator = Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return
    raise ConfigError(f"{where(list(error.absolute_path))}: {describe(error)}")


def file_path_name(source: str) -> Callable[[Sequence[str | int]], str]:
    """``where`` for errors in a config file: ``config file F: drive[0].iops``."""
    def where(path: Sequence[str | int]) -> str:
        text = ""
        for part in path:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return f"config file {source}: {text}" if text else f"config file {source}"
    return where
