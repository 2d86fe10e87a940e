"""The configuration pipeline: parse argv, read the JSON file, merge, validate."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stratovmm.config import schema as schema_mod
from stratovmm.config.cmdline import CommandLineParser, ParsedCommandLine
from stratovmm.config.model import VmConfig, build_vm_config, runtime_options
from stratovmm.config.spellings import canonical_document
from stratovmm.errors import ConfigError
from stratovmm.registry import DeviceRegistry, OptionSpec

MAX_CONFIG_BYTES = 1 << 20


class _DuplicateKey(ValueError):
    """A JSON object names ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object from its pairs; a repeated key is an error (``json`` would keep the last
    one silently, so half of a user's settings would vanish; serde, as in StratoVirt,
    refuses it too)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def read_config_file(path: str) -> Any:
    """The parsed JSON file; unreadable or malformed files name ``-config``.  (``json`` is
    imported here, not with the module: a start without ``-config`` does not need it.)"""
    import json

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"-config {path}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"-config {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ConfigError(f"-config {path}: duplicate key {exc.key!r} in one object") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"-config {path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"-config {path}: not UTF-8 text") from exc


def file_options(devices: DeviceRegistry) -> dict[str, OptionSpec]:
    """The option that owns each top-level JSON key."""
    return {o.json_key: o for o in devices.options.values() if o.file_key}


def merge(file_doc: dict[str, Any], cmdline_doc: dict[str, Any],
          owners: dict[str, OptionSpec]) -> dict[str, Any]:
    """The command line over the file: objects key by key, lists item by item (by id)."""
    merged = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
              for k, v in file_doc.items()}
    for key, value in cmdline_doc.items():
        spec = owners.get(key)
        old = merged.get(key)
        if isinstance(value, list) and isinstance(old, list):
            id_field = spec.id_field if spec else None
            merged[key] = _merge_items(old, value, id_field)
        elif isinstance(value, dict) and isinstance(old, dict):
            merged[key] = _merge_objects(old, value)
        else:
            merged[key] = value
    return merged


def _merge_objects(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Key by key, nested objects too (``-cpu`` over the file's ``machine-config.cpu``)."""
    out = dict(old)
    for key, value in new.items():
        inner = out.get(key)
        out[key] = (_merge_objects(inner, value)
                    if isinstance(value, dict) and isinstance(inner, dict) else value)
    return out


def _merge_items(old: list[Any], new: list[Any], id_field: str | None) -> list[Any]:
    out = list(old)
    for item in new:
        ident = item.get(id_field) if id_field else None
        for n, existing in enumerate(out):
            if ident is not None and isinstance(existing, dict) and existing.get(id_field) == ident:
                out[n] = item
                break
        else:
            out.append(item)
    return out


def _check_ids(document: dict[str, Any], owners: dict[str, OptionSpec], where: str) -> None:
    """Every device id is unique across all device kinds."""
    seen: dict[str, str] = {}
    for key, spec in owners.items():
        if spec.id_field is None or key not in document:
            continue
        value = document[key]
        for item in value if isinstance(value, list) else [value]:
            ident = item.get(spec.id_field) if isinstance(item, dict) else None
            if ident is None:
                continue
            if ident in seen:
                raise ConfigError(f"{where}: duplicate id {ident!r} ({seen[ident]} and {key})")
            seen[ident] = key


def _check_iothreads(document: dict[str, Any], defined: Iterable[str],
                     parsed: ParsedCommandLine | None, where: str) -> None:
    """Every ``iothread`` field names a defined ``-iothread``."""
    names = set(defined)
    for key, value in document.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and "iothread" in item and item["iothread"] not in names:
                origin = parsed.where([key, "iothread"]) if parsed else f"{where}: {key}.iothread"
                raise ConfigError(f"{origin}: iothread {item['iothread']!r} is not defined"
                                  " (add -iothread id=NAME)")


def load_config(argv: list[str], devices: DeviceRegistry,
                parsed: ParsedCommandLine | None = None) -> VmConfig:
    """Parse, read, merge and validate; the typed config or a ``ConfigError``."""
    if parsed is None:
        parsed = parse_command_line(argv, devices)
    schema = schema_mod.assemble(devices)
    schema_mod.check(parsed.document, schema, parsed.where)
    runtime = runtime_options(parsed.runtime)
    owners = file_options(devices)
    file_doc: dict[str, Any] = {}
    if runtime.config_file is not None:
        loaded = canonical_document(read_config_file(runtime.config_file),
                                    f"config file {runtime.config_file}")
        where = schema_mod.file_path_name(runtime.config_file)
        schema_mod.check(loaded, schema, where)
        file_doc = loaded
        _check_ids(file_doc, owners, f"config file {runtime.config_file}")
    merged = merge(file_doc, parsed.document, owners)
    schema_mod.check(merged, schema, parsed.where)
    _check_ids(merged, owners, "configuration")
    iothreads = [item["id"] for item in merged.get("iothread", [])]
    _check_iothreads(parsed.document, iothreads, parsed, "")
    _check_iothreads(merged, iothreads, None, f"config file {runtime.config_file}")
    return build_vm_config(merged, runtime)


def parse_command_line(argv: list[str], devices: DeviceRegistry) -> ParsedCommandLine:
    """Just the argv step (for ``--help`` before any validation)."""
    single = {d.option.json_key for d in devices.device_types.values() if not d.option.repeatable}
    return CommandLineParser(devices.options, single).parse(argv)
