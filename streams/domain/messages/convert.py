"""Generic conversion between messages (or states holding them) and plain values, driven by the dataclass fields.

:func:`from_record` takes a decoded Avro value (unknown fields ignored, so newer writers still load) and
:func:`to_record` gives back a value :class:`schemas.AvroCodec` encodes. States keep messages as JSON through
:func:`to_jsonable` / :func:`from_jsonable`, which also serve every state's ``to_json`` / ``from_json``
(:class:`JsonState`). Times load from aware datetimes, epoch milliseconds or ISO-8601 text.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Self, TypeVar, Union, get_args, get_origin, get_type_hints

from streams.domain.messages.base import Message
from streams.domain.messages.registry import message_type

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

T = TypeVar("T")


def from_record(name: str, value: Mapping[str, Any]) -> Message:
    """The message of a decoded Avro value; fields the class does not know are ignored."""
    return _load_dataclass(message_type(name), value)


def to_record(message: Message) -> dict[str, Any]:
    """The Avro value of a message: lists for tuples, dicts for nested records, aware datetimes."""
    return _dump_fields(message, as_json=False)


# --- JSON for states ----------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy of a dataclass tree: ISO-8601 times, enum values, and every message wrapped
    as ``{"record": name, "value": fields}`` so it loads back as the right class."""
    return _dump(obj, as_json=True)


def from_jsonable(tp: type[T], value: Any) -> T:
    """Load ``value`` (made by :func:`to_jsonable`) as ``tp``; unknown fields ignored, missing ones defaulted."""
    loaded: T = _load(tp, value)
    return loaded


class JsonState:
    """Mixin for a frozen state dataclass: ``to_json`` / ``from_json`` for a Faust table holding JSON."""

    def to_json(self) -> dict[str, Any]:
        """The state as plain JSON values."""
        return _dump_fields(self, as_json=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The state ``to_json`` wrote."""
        return _load_dataclass(cls, data)


_SCALARS = frozenset({str, int, float, bool, type(None)})
"""Types stored as they are: most fields are, so they are recognised first, by exact type."""

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, computed once per class (``dataclasses.fields`` builds a tuple each call)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _dump_fields(obj: Any, *, as_json: bool) -> dict[str, Any]:
    return {name: _dump(getattr(obj, name), as_json=as_json) for name in _field_names(type(obj))}


def _dump(value: Any, *, as_json: bool) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, datetime):
        return value.isoformat() if as_json else value
    if isinstance(value, Enum):
        return _dump(value.value, as_json=as_json)
    if isinstance(value, Message) and as_json:
        return {"record": value.record_name, "value": _dump_fields(value, as_json=True)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dump_fields(value, as_json=as_json)
    if isinstance(value, tuple | list):
        return [_dump(v, as_json=as_json) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _dump(v, as_json=as_json) for k, v in value.items()}
    return value


_HINTS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _hints(cls: type) -> tuple[tuple[str, Any], ...]:
    """A dataclass's init fields with their resolved types, computed once per class."""
    hints = _HINTS.get(cls)
    if hints is None:
        resolved = get_type_hints(cls)
        hints = _HINTS[cls] = tuple((f.name, resolved[f.name]) for f in dataclasses.fields(cls) if f.init)
    return hints


def _load_dataclass(cls: type[T], value: Mapping[str, Any]) -> T:
    if not isinstance(value, Mapping):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {value!r}")
    kwargs = {name: _load(tp, value[name]) for name, tp in _hints(cls) if name in value}
    return cls(**kwargs)


def _load(tp: Any, value: Any) -> Any:
    if type(value) is tp and tp in _SCALARS and tp is not type(None):
        return value  # a plain field of its own type (``int`` and ``bool`` are told apart by the exact type)
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if len(options) < len(get_args(tp)):
                return None
            raise TypeError(f"None for non-optional {tp}")
        if all(isinstance(o, type) and issubclass(o, Message) for o in options):
            return _load_message(tuple(options), value)
        if len(options) != 1:
            raise TypeError(f"unsupported union {tp}")
        return _load(options[0], value)
    if origin is tuple:
        item = get_args(tp)[0]
        return tuple(_load(item, v) for v in value)
    if origin is dict:
        item = get_args(tp)[1]
        return {str(k): _load(item, v) for k, v in value.items()}
    if tp is datetime:
        return _load_datetime(value)
    if isinstance(tp, type):
        if issubclass(tp, Message):
            return _load_message((tp,), value)
        if issubclass(tp, Enum):
            return tp(value)
        if dataclasses.is_dataclass(tp):
            return _load_dataclass(tp, value)
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, tp):
            return value
    if tp is Any:
        return value
    raise TypeError(f"cannot load {value!r} as {tp}")


def _load_message(allowed: tuple[type[Message], ...], value: Any) -> Message:
    """A message nested in a state: ``{"record": name, "value": fields}``."""
    if not isinstance(value, Mapping) or "record" not in value:
        raise TypeError(f"expected a wrapped message, got {value!r}")
    cls = message_type(str(value["record"]))
    if not issubclass(cls, allowed):
        raise TypeError(f"{cls.__name__} is not one of {[a.__name__ for a in allowed]}")
    return _load_dataclass(cls, value["value"])


def _load_datetime(value: Any) -> datetime:
    """An aware UTC datetime from a datetime, epoch milliseconds or ISO-8601 text."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        return value.astimezone(UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        return EPOCH + timedelta(milliseconds=value)
    if isinstance(value, str):
        return _load_datetime(datetime.fromisoformat(value))
    raise TypeError(f"not a timestamp: {value!r}")
