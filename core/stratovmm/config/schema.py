"""The one schema module: how every JSON schema in StratoVMM is applied and how a
violation is told.

* ``Validator``: JSON Schema 2020-12 with one change, the integer rule: an integer
  is a Python ``int`` (JSON Schema counts ``2.0`` as one).  The config file, the
  command line, QMP arguments and ``device_add``'s per-driver arguments are all
  checked with it, so ``1.0`` is refused alike everywhere.
* ``problem``: the one error formatter, ``WHERE: REASON`` for the most relevant
  violation (jsonschema's ``best_match``).  Each caller only says how to name a
  location: an option (``-drive``), a config-file key (``config file F:
  drive[0].iops``), a QMP command's argument (``device_add: addr``).
* ``assemble``: the config file's schema, from the core's properties and every
  device type's fragment.

jsonschema is imported on first use, not with this module: ``check`` first asks
``conforms`` (a quick walk that only ever says "surely valid"), so a run whose
configuration is valid never loads it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from stratovmm.config.core_options import CORE_SCHEMA
from stratovmm.config.grammar import format_size
from stratovmm.conforms import conforms
from stratovmm.errors import ConfigError
from stratovmm.registry import DeviceRegistry

if TYPE_CHECKING:
    import jsonschema

Where = Callable[[Sequence[str | int]], str]
"""Names the location of a JSON path (the keys and indexes down to the bad value)."""


def _is_integer(_checker: Any, instance: Any) -> bool:
    """JSON Schema counts ``2.0`` as an integer, but the VMM needs a Python ``int`` (a float
    vCPU count or RAM size would fail deep in the machine set-up with a traceback)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.cache
def _validator_class() -> Any:
    import jsonschema

    return jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer",
                                                                           _is_integer),
    )


def __getattr__(name: str) -> Any:
    """``Validator``: the jsonschema validator class, built on first use."""
    if name == "Validator":
        return _validator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _json(value: Any) -> str:
    """``value`` spelled as in the JSON file.  ``json`` is imported here, for the error
    messages that need it: a start without an error imports neither it nor the regular
    expressions its modules compile."""
    import json

    return json.dumps(value)


def _show(value: Any, schema: dict[str, Any]) -> str:
    if schema.get("x-unit") == "size" and isinstance(value, int) and not isinstance(value, bool):
        return format_size(value)
    return _json(value)


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
        return f"expected {expected}, got {_json(inst)}"
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
        known = ", ".join(sorted(schema.get("properties", {}))) or "none"
        return f"unknown key {', '.join(map(repr, extra))} (known: {known})"
    if v == "required":
        return f"missing required key {error.message.split(' ')[0]}"
    if v in ("enum", "const"):
        allowed = error.validator_value if v == "enum" else [error.validator_value]
        return f"{_json(inst)} is not one of {', '.join(_json(a) for a in allowed)}"
    if v in ("minLength",) and inst == "":
        return "must not be empty"
    return str(error.message)


def problem(validator: jsonschema.protocols.Validator, instance: Any, where: Where
            ) -> str | None:
    """``WHERE: REASON`` for the most relevant violation of ``instance``; None when it is
    valid.  ``where(path)`` names the location at the JSON path of the violation."""
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    return f"{where(list(error.absolute_path))}: {describe(error)}"


def check(document: Any, schema: dict[str, Any], where: Where) -> None:
    """Validate ``document``; ``ConfigError`` with the ``problem`` line."""
    if conforms(schema, document):
        return
    message = problem(_validator_class()(schema), document, where)
    if message is not None:
        raise ConfigError(message)


def json_path(path: Sequence[str | int]) -> str:
    """``drive[0].iops`` for the path ``["drive", 0, "iops"]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def under(name: str) -> Where:
    """``where`` for a value named ``name`` (``config file F``, a QMP command): ``NAME`` at
    the top, ``NAME: drive[0].iops`` below it."""
    def where(path: Sequence[str | int]) -> str:
        text = json_path(path)
        return f"{name}: {text}" if text else name
    return where


def file_path_name(source: str) -> Where:
    """``where`` for errors in a config file: ``config file F: drive[0].iops``."""
    return under(f"config file {source}")
