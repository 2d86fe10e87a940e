"""The quick schema walk (``stratovmm.conforms``) never says "valid" where jsonschema
says "invalid", on every schema the core and the in-tree plugins register; it does say
"valid" for ordinary configurations and for every registered fragment, so a normal run
does not import jsonschema at all."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratovmm.cli import build_registry
from stratovmm.config import schema as schema_mod
from stratovmm.config.load import parse_command_line
from stratovmm.conforms import conforms, surely_valid_schema
from stratovmm.plugin import PluginHost

EXAMPLES = int(os.environ.get("STRATOVMM_FUZZ_EXAMPLES", "300"))
REGISTRY = build_registry(PluginHost.discover())
CONFIG_SCHEMA = schema_mod.assemble(REGISTRY.devices)
SCHEMAS: dict[str, dict[str, Any]] = {"config": CONFIG_SCHEMA}
SCHEMAS.update({f"qmp {n}": dict(c.schema) for n, c in REGISTRY.qmp.commands.items()})
SCHEMAS.update({f"device_add {n}": dict(d.schema)
                for n, d in REGISTRY.devices.hotplug_drivers.items()})
SCHEMAS.update({f"device {n}": dict(d.schema) for n, d in REGISTRY.devices.device_types.items()})

SCALARS = (st.none() | st.booleans() | st.integers(-(1 << 33), 1 << 33)
           | st.sampled_from([0, 1, 2, 254, 255, 256, 1 << 28, 1 << 32, 4096, 64, 63])
           | st.floats(allow_nan=False) | st.sampled_from([1.0, 2.0, 0.5])
           | st.text(max_size=12) | st.sampled_from(["", "a", "on", "off", "MicroVm", "x" * 300,
                                                     "/tmp/x", "unix:/x", "drive-1", "1a"]))
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def near(schema: Any) -> st.SearchStrategy[Any]:
    """Values shaped like ``schema`` (its keys, its enums, its bounds), valid or not."""
    if not isinstance(schema, dict):
        return ANY_JSON
    options: list[st.SearchStrategy[Any]] = [ANY_JSON]
    props = schema.get("properties")
    if isinstance(props, dict) and props:
        keys = sorted(props)
        options.append(st.lists(st.sampled_from(keys), unique=True).flatmap(
            lambda chosen: st.fixed_dictionaries({k: near(props[k]) for k in chosen},
                                                 optional={"zz-extra": ANY_JSON})))
    if "items" in schema:
        options.append(st.lists(near(schema["items"]), max_size=3))
    for key in ("enum",):
        if isinstance(schema.get(key), list) and schema[key]:
            options.append(st.sampled_from(schema[key]))
    if "const" in schema:
        options.append(st.just(schema["const"]))
    bounds = [schema[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
              if isinstance(schema.get(k), int)]
    if bounds:
        options.append(st.sampled_from([b + d for b in bounds for d in (-1, 0, 1)]))
        options.append(st.sampled_from([float(b) for b in bounds]))
    lengths = [schema[k] for k in ("minLength", "maxLength") if isinstance(schema.get(k), int)]
    if lengths:
        options.append(st.sampled_from(["x" * max(n + d, 0) for n in lengths for d in (-1, 0, 1)]))
    return st.one_of(options)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=EXAMPLES // 3 or 1, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_a_quick_yes_is_a_jsonschema_yes(name: str, data: st.DataObject) -> None:
    """Whatever the value, ``conforms`` True implies jsonschema (the config's validator)
    finds no violation."""
    schema = SCHEMAS[name]
    value = data.draw(near(schema))
    if conforms(schema, value):
        assert schema_mod.Validator(schema).is_valid(value), value


KEYWORD_VALUES = {
    "type": st.sampled_from(["object", "string", "integer", "number", "boolean", "null",
                             "array", "int", ["string", "integer"], ["string", "string"], [],
                             3]),
    "minLength": st.sampled_from([0, 1, -1, 2.0, True, "1"]),
    "maxLength": st.sampled_from([0, 5, -1, 1.5]),
    "minimum": st.sampled_from([0, 1.5, "0", None, True]),
    "maximum": st.sampled_from([10, -1.5, "9"]),
    "exclusiveMaximum": st.sampled_from([10, "x"]),
    "multipleOf": st.sampled_from([4096, 0, -2, 0.5, "2"]),
    "pattern": st.sampled_from(["^[a-z]+$", "(", "[", "a{2,1}", 5, "$(?!\n)"]),
    "required": st.sampled_from([["a"], ["a", "a"], [1], "a", []]),
    "enum": st.sampled_from([[1, "a"], [], "a", None]),
    "const": ANY_JSON,
    "description": st.sampled_from(["text", 1]),
    "additionalProperties": st.sampled_from([False, True, {"type": "string"}, {"type": 5}, 1]),
    "x-message": ANY_JSON,
    "oneOf": st.just([{"type": "string"}]),
    "$schema": st.just("https://json-schema.org/draft/2020-12/schema"),
    "items": st.sampled_from([{"type": "integer"}, [{"type": "string"}], True, "x"]),
}


@st.composite
def schema_like(draw: st.DrawFn, depth: int = 2) -> Any:
    """A dict of keywords with well- or ill-formed values, sometimes nested."""
    keys = draw(st.lists(st.sampled_from(sorted(KEYWORD_VALUES)), unique=True, max_size=5))
    out: dict[str, Any] = {k: draw(KEYWORD_VALUES[k]) for k in keys}
    if depth and draw(st.booleans()):
        out["properties"] = draw(st.dictionaries(st.sampled_from(["a", "b"]),
                                                 schema_like(depth - 1), max_size=2))
    return out


@settings(max_examples=EXAMPLES, deadline=None)
@given(schema=schema_like())
def test_a_quick_schema_yes_is_a_meta_schema_yes(schema: Any) -> None:
    """``surely_valid_schema`` True implies jsonschema's Draft 7 meta-schema check passes
    (registration's check)."""
    if surely_valid_schema(schema):
        jsonschema.Draft7Validator.check_schema(schema)


@settings(max_examples=EXAMPLES, deadline=None)
@given(schema=schema_like(), value=ANY_JSON)
def test_a_quick_yes_holds_on_arbitrary_schemas(schema: Any, value: Any) -> None:
    """On random (well-formed) schemas too, ``conforms`` True implies jsonschema's yes."""
    if surely_valid_schema(schema) and conforms(schema, value):
        assert schema_mod.Validator(schema).is_valid(value)


def test_every_registered_fragment_passes_the_quick_meta_check() -> None:
    """Every schema the core and in-tree plugins register is vouched for without
    jsonschema (so registration does not import it)."""
    for name, schema in SCHEMAS.items():
        if name != "config":
            assert surely_valid_schema(schema), name


def test_ordinary_command_lines_take_the_quick_path() -> None:
    """The documents a full command line (every device kind) makes conform quickly."""
    argv = ["-smp", "2", "-m", "512M", "-kernel", "/k", "-initrd", "/i", "-append", "a b",
            "-iothread", "id=io0", "-drive", "id=d0,file=/x,serial=S,readonly=on,iothread=io0",
            "-netdev", "id=n0,netdev=tap0,mac=52:54:00:12:34:56", "-serial", "stdio",
            "-rng", "random_file=/dev/urandom,bytes_per_sec=1000",
            "-chardev", "id=c0,path=/tmp/c.sock", "-device", "vsock,id=v0,guest-cid=3",
            "-balloon", "deflate-on-oom=on", "-machine", "microvm,mem-share=off",
            "-api-channel", "unix:/tmp/q.sock", "-cpu", "host,kvm-pv-ipi=off"]
    document = parse_command_line(argv, REGISTRY.devices).document
    assert schema_mod.Validator(CONFIG_SCHEMA).is_valid(document)
    assert conforms(CONFIG_SCHEMA, document)


def test_refused_values_are_still_told_by_jsonschema() -> None:
    """A value the walk cannot vouch for still gets jsonschema's worded error."""
    document = parse_command_line(["-smp", "255", "-kernel", "/k"], REGISTRY.devices).document
    assert not conforms(CONFIG_SCHEMA, document)
    with pytest.raises(Exception, match="255 is above the maximum 254"):
        schema_mod.check(document, CONFIG_SCHEMA, parse_command_line(
            ["-smp", "255", "-kernel", "/k"], REGISTRY.devices).where)


def test_a_valid_start_up_does_not_import_jsonschema(tmp_path: Any) -> None:
    """Building the registry and loading a valid configuration leaves jsonschema
    unimported (it is loaded only to word an error)."""
    code = ("import sys\n"
            "from stratovmm.cli import build_registry\n"
            "from stratovmm.config.load import load_config\n"
            "from stratovmm.plugin import PluginHost\n"
            "registry = build_registry(PluginHost.discover())\n"
            "load_config(['-kernel', '/k', '-drive', 'id=d,file=/x', '-serial', 'stdio'],"
            " registry.devices)\n"
            "print('jsonschema' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.strip() == "False", out.stderr
