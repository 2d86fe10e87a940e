"""A quick yes for the common case: is this value surely valid under this schema?

Importing jsonschema (with attrs, referencing, rpds and importlib.metadata) costs
tens of milliseconds and several MiB, more than the rest of a VM's start-up;
yet nearly every document it would check is valid.  ``conforms`` walks a
schema written with the small set of JSON Schema 2020-12 keywords our schemas
use and answers True only when the value satisfies every one of them, keyword
by keyword as jsonschema applies it (``pattern`` with ``re.search``, ``minLength``
on ``len``, a keyword ignored for values of other types, and the config's
integer rule: an ``int``, not ``2.0`` and not a bool).  Any doubt — a keyword it
does not know (``$ref``, ``oneOf``, ...), a value of an unusual type — is a
False, and so is every violation: the caller then runs jsonschema, which alone
decides what is wrong and words the error.  So a False costs time, never a
different answer.

``surely_valid_schema`` does the same for the meta-schema check a plugin's
schema fragment gets at registration (Draft 7, with its ``regex`` format).
Both are checked against jsonschema by property-based tests.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

# keywords jsonschema does not assert: annotations, and our own ``x-`` hints
_ANNOTATIONS = frozenset({"$schema", "$comment", "title", "description", "default",
                          "examples", "deprecated", "readOnly", "writeOnly"})

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_scalar(a: Any, b: Any) -> bool:
    """``a`` equals ``b`` and both are the same JSON scalar type (so jsonschema's ``equal``,
    which tells ``True`` from ``1``, agrees)."""
    return type(a) is type(b) and isinstance(a, str | int | float | bool | None) and a == b


def _type(want: Any, value: Any) -> bool:
    names = [want] if isinstance(want, str) else want
    if not isinstance(names, list):
        return False
    return any(name in _TYPES and _TYPES[name](value) for name in names)


def _object(schema: Mapping[str, Any], value: Any) -> bool:
    """``properties``, ``additionalProperties`` and ``required`` (objects only)."""
    if not isinstance(value, dict):
        return True
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return False
    extra_schema = schema.get("additionalProperties", True)
    for key, item in value.items():
        if not conforms(properties.get(key, extra_schema), item):
            return False
    required = schema.get("required", [])
    return isinstance(required, list) and all(key in value for key in required)


def _string(schema: Mapping[str, Any], value: Any) -> bool:
    """``minLength``, ``maxLength``, ``pattern`` (strings only)."""
    if not isinstance(value, str):
        return True
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if not isinstance(low, int) or len(value) < low:
        return False
    if high is not None and (not isinstance(high, int) or len(value) > high):
        return False
    pattern = schema.get("pattern")
    return pattern is None or (isinstance(pattern, str) and re.search(pattern, value) is not None)


_BOUNDS = (("minimum", operator.ge), ("maximum", operator.le),
           ("exclusiveMinimum", operator.gt), ("exclusiveMaximum", operator.lt))


def _number(schema: Mapping[str, Any], value: Any) -> bool:
    """``minimum``, ``maximum``, their exclusive forms and an integer ``multipleOf``."""
    if not _is_number(value):
        return True
    for keyword, holds in _BOUNDS:
        limit = schema.get(keyword)
        if limit is not None and not (_is_number(limit) and holds(value, limit)):
            return False
    step = schema.get("multipleOf")
    if step is None:
        return True
    return (type(step) is int and step > 0 and type(value) is int and value % step == 0)


def _array(schema: Mapping[str, Any], value: Any) -> bool:
    """``items`` (one schema for every item), ``minItems``, ``maxItems`` (lists only)."""
    if not isinstance(value, list):
        return True
    low, high = schema.get("minItems", 0), schema.get("maxItems")
    if not isinstance(low, int) or len(value) < low:
        return False
    if high is not None and (not isinstance(high, int) or len(value) > high):
        return False
    items = schema.get("items", True)
    return isinstance(items, bool | dict) and all(conforms(items, item) for item in value)


_KNOWN = frozenset({"type", "properties", "additionalProperties", "required", "minLength",
                    "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
                    "exclusiveMaximum", "multipleOf", "items", "minItems", "maxItems",
                    "enum", "const"})


def conforms(schema: Any, value: Any) -> bool:
    """True when ``value`` surely satisfies ``schema``; False when it does not or when
    this quick walk cannot tell (then ask jsonschema)."""
    if schema is True:
        return True
    if not isinstance(schema, dict):
        return False
    for keyword in schema:
        if keyword not in _KNOWN and keyword not in _ANNOTATIONS and not (
                isinstance(keyword, str) and keyword.startswith("x-")):
            return False
    if "type" in schema and not _type(schema["type"], value):
        return False
    if "enum" in schema:
        enum = schema["enum"]
        if not isinstance(enum, list) or not any(_same_scalar(e, value) for e in enum):
            return False
    if "const" in schema and not _same_scalar(schema["const"], value):
        return False
    return (_object(schema, value) and _string(schema, value) and _number(schema, value)
            and _array(schema, value))


_SIMPLE_TYPES = frozenset(_TYPES)


def _non_negative(value: Any) -> bool:
    return type(value) is int and value >= 0


def _regex(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        re.compile(value)
    except re.error:
        return False
    return True


def _type_value(value: Any) -> bool:
    if isinstance(value, str):
        return value in _SIMPLE_TYPES
    return (isinstance(value, list) and bool(value) and all(v in _SIMPLE_TYPES for v in value)
            and len(set(value)) == len(value))


_KEYWORD_SHAPES: dict[str, Callable[[Any], bool]] = {
    "type": _type_value,
    "properties": lambda v: isinstance(v, dict) and all(surely_valid_schema(s)
                                                         for s in v.values()),
    "additionalProperties": lambda v: surely_valid_schema(v),
    "items": lambda v: surely_valid_schema(v),
    "required": lambda v: (isinstance(v, list) and all(isinstance(k, str) for k in v)
                           and len(set(v)) == len(v)),
    "minLength": _non_negative, "maxLength": _non_negative,
    "minItems": _non_negative, "maxItems": _non_negative,
    "pattern": _regex,
    "minimum": _is_number, "maximum": _is_number,
    "exclusiveMinimum": _is_number, "exclusiveMaximum": _is_number,
    "multipleOf": lambda v: _is_number(v) and v > 0,
    "enum": lambda v: isinstance(v, list),
    "const": lambda v: True,
    "title": lambda v: isinstance(v, str), "description": lambda v: isinstance(v, str),
    "$comment": lambda v: isinstance(v, str),
    "default": lambda v: True,
}


def surely_valid_schema(schema: Any) -> bool:
    """True when ``schema`` surely passes the Draft 7 meta-schema check; False when it
    does not or when this walk cannot tell (then ask jsonschema)."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    for keyword, value in schema.items():
        if not isinstance(keyword, str):
            return False
        if keyword.startswith("x-"):
            continue
        shape = _KEYWORD_SHAPES.get(keyword)
        if shape is None or not shape(value):
            return False
    return True
