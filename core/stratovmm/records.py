"""``@record``: the dataclasses the VMM creates on every start, without ``exec``.

``@dataclass`` writes the source of each method it adds (``__init__``, ``__repr__``,
``__eq__``, ``__hash__``, and for a frozen class ``__setattr__``/``__delattr__``) and
compiles it with ``exec``: about half a millisecond per class on CPython 3.11, and the
VMM's start-up path defines some thirty of them (the registry's option and device
types, the configuration model, the boot loader's records), a fifth of the time from
exec to the guest's first byte.  ``record`` gives those classes the same behaviour from
methods that are closures over the field list, built in microseconds: keyword or
positional construction with defaults and ``field(default_factory=...)``, the dataclass
``repr``, equality and hashing over the fields (``compare=False`` fields left out), a
frozen class refusing assignment with ``dataclasses.FrozenInstanceError``, ``slots``,
``__match_args__``, ``field_names`` for what ``dataclasses.fields`` did and ``replace`` for
``dataclasses.replace``.  Type
checkers see a dataclass (PEP 681's ``dataclass_transform``).
``tests/unit/test_records.py`` checks with hypothesis that a record and the same class
under ``@dataclass`` behave alike.

Classes whose instances are made per guest request (the virtio chains, guest memory's
regions) stay dataclasses: there the exec'd ``__init__`` is the faster one per instance,
and a start pays for them once.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")

_MISSING: Any = dataclasses.MISSING
_FIELDS = "__record_fields__"


class _Field:
    """One field: its name, default or default factory, and whether it is compared and
    shown in the repr."""

    __slots__ = ("compare", "default", "factory", "name", "repr")

    def __init__(self, name: str, spec: Any) -> None:
        self.name = name
        self.default: Any
        self.factory: Any
        if isinstance(spec, dataclasses.Field):
            self.default, self.factory = spec.default, spec.default_factory
            self.compare, self.repr = spec.compare, spec.repr
        else:
            self.default, self.factory, self.compare, self.repr = spec, _MISSING, True, True


def _fields_of(cls: type) -> list[_Field]:
    """The fields in annotation order; a field without a default may not follow one with
    a default (as for a dataclass)."""
    out: list[_Field] = []
    for name in inspect.get_annotations(cls):
        field = _Field(name, cls.__dict__.get(name, _MISSING))
        if field.default is _MISSING and field.factory is _MISSING and any(
                f.default is not _MISSING or f.factory is not _MISSING for f in out):
            raise TypeError(f"non-default argument {name!r} follows default argument")
        out.append(field)
    return out


def _make_init(cls: type, fields: list[_Field], frozen: bool) -> Callable[..., None]:
    names = [f.name for f in fields]
    by_name = {f.name: f for f in fields}
    setter = object.__setattr__ if frozen else setattr
    where = f"{cls.__qualname__}.__init__()"

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if not kwargs and len(args) == len(names):     # all given in order: the usual call
            for name, value in zip(names, args, strict=True):
                setter(self, name, value)
            return
        if len(args) > len(names):
            raise TypeError(f"{where} takes {len(names) + 1} positional arguments but"
                            f" {len(args) + 1} were given")
        values = dict(zip(names, args, strict=False))  # fewer args than names: the rest
        for key, value in kwargs.items():
            if key not in by_name:
                raise TypeError(f"{where} got an unexpected keyword argument {key!r}")
            if key in values:
                raise TypeError(f"{where} got multiple values for argument {key!r}")
            values[key] = value
        for field in fields:
            if field.name in values:
                value = values[field.name]
            elif field.default is not _MISSING:
                value = field.default
            elif field.factory is not _MISSING:
                value = field.factory()
            else:
                raise TypeError(f"{where} missing 1 required positional argument:"
                                f" {field.name!r}")
            setter(self, field.name, value)

    return __init__


def _add_methods(cls: type, fields: list[_Field], frozen: bool, eq: bool) -> None:
    shown = [f.name for f in fields if f.repr]
    compared = [f.name for f in fields if f.compare]

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{type(self).__qualname__}({inner})"

    def key(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in compared)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return key(self) == key(other)

    def __hash__(self: Any) -> int:
        return hash(key(self))

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self: Any, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    methods: dict[str, Any] = {"__init__": _make_init(cls, fields, frozen),
                               "__repr__": __repr__}
    if eq:
        methods["__eq__"] = __eq__
        methods["__hash__"] = __hash__ if frozen else None
    if frozen:
        methods |= {"__setattr__": __setattr__, "__delattr__": __delattr__}
    for name, method in methods.items():
        if callable(method):
            method.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, method)


def _with_slots(cls: type, fields: list[_Field]) -> type:
    """``cls`` made again with ``__slots__`` for its fields (a class's slots are fixed
    when it is created); defaults are class attributes, which slots would shadow, so
    they move into the field list, where ``__init__`` reads them anyway."""
    namespace = {k: v for k, v in cls.__dict__.items()
                 if k not in {f.name for f in fields} and k not in ("__dict__", "__weakref__")}
    namespace["__slots__"] = tuple(f.name for f in fields)
    return type(cls)(cls.__name__, cls.__bases__, namespace)


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(*, frozen: bool = False, eq: bool = True, slots: bool = False
           ) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(dataclasses.field,))
def record(cls: type[T] | None = None, /, *, frozen: bool = False, eq: bool = True,
           slots: bool = False) -> type[T] | Callable[[type[T]], type[T]]:
    """The class with dataclass behaviour (see the module's docstring); used as
    ``@record`` or ``@record(frozen=True, slots=True)``."""

    def wrap(cls: type[T]) -> type[T]:
        fields = _fields_of(cls)
        for field in fields:   # the class attribute holding a Field is not a default
            if isinstance(cls.__dict__.get(field.name), dataclasses.Field):
                delattr(cls, field.name)
        if slots:
            cls = _with_slots(cls, fields)
        setattr(cls, _FIELDS, tuple(fields))
        setattr(cls, "__match_args__", tuple(f.name for f in fields))  # noqa: B010
        _add_methods(cls, fields, frozen, eq)
        return cls

    return wrap if cls is None else wrap(cls)


def is_record(obj_or_cls: Any) -> bool:
    """Made by ``@record`` (``dataclasses.is_dataclass`` for records)."""
    return hasattr(obj_or_cls, _FIELDS)


def field_names(obj_or_cls: Any) -> tuple[str, ...]:
    """The record's field names, in order (``dataclasses.fields`` for records)."""
    fields: tuple[_Field, ...] = getattr(obj_or_cls, _FIELDS)
    return tuple(f.name for f in fields)


def replace(obj: T, /, **changes: Any) -> T:
    """A new record like ``obj`` with ``changes`` (``dataclasses.replace`` for records; a
    name that is not a field is refused by the record's ``__init__``, as there)."""
    values = {name: getattr(obj, name) for name in field_names(obj)}
    return type(obj)(**{**values, **changes})
