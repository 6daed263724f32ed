"""Clean text: what every string the pipeline accepts from outside must be, and where a record breaks the rule.

A string is clean when it holds no control character (C0 ``U+0000``–``U+001F``, ``U+007F``, C1
``U+0080``–``U+009F``; tab and newline included) and no surrogate code point (``U+D800``–``U+DFFF``). A Python
string decoded from valid UTF-8 never holds a surrogate; one gets in through a JSON escape such as ``"\\ud800"``
or an error handler like ``surrogateescape``, and is an unpaired half that no UTF-8 encoder will write.

:func:`unclean_field` walks a whole record (a message dataclass, or the JSON object ``pipeline publish`` is given)
and names the first string that breaks the rule, map keys included. It lives in the domain, which imports nothing
above it, so the gateway's models, ``pipeline publish`` and the steps that decide on commands published straight
to Kafka all apply the one rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any

_NOT_CLEAN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` is not clean text (the first offending character, named and placed), or None when it is."""
    match = _NOT_CLEAN.search(value)
    return None if match is None else _described(match)


def is_clean_text(value: str) -> bool:
    """True when ``value`` holds no control character and no unpaired surrogate (see the module's rule)."""
    return _NOT_CLEAN.search(value) is None


def _described(match: re.Match[str]) -> str:
    code = ord(match.group())
    kind = "an unpaired surrogate" if 0xD800 <= code <= 0xDFFF else "a control character"
    return f"contains {kind} (U+{code:04X}) at position {match.start()}"


@dataclass(frozen=True)
class UncleanField:
    """A string of a record that is not clean text: where it is (``lines[1].sku``, ``profile['city']``,
    ``profile key '\\x82'``) and what is wrong with it."""

    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field} {self.problem}"


def unclean_field(record: object) -> UncleanField | None:
    """The first string of ``record`` that is not clean text, or None when every one is.

    ``record`` is a dataclass (its fields in order), a mapping (its keys and values), a list or tuple, a string,
    or anything else (a number, a time, None), which holds no string. A clean record costs one gathering of its
    strings and one pattern search over them all; the path is worked out only when a string breaks the rule."""
    strings: list[str] = []
    _gather(record, strings)
    if _NOT_CLEAN.search("".join(strings)) is None:
        return None
    return _named(record, "")


_STRING, _MAPPING, _SEQUENCE, _RECORD, _OTHER = range(5)
_KINDS: dict[type, int] = {str: _STRING, dict: _MAPPING, list: _SEQUENCE, tuple: _SEQUENCE, datetime: _OTHER}
"""What each type of value is to the walk, found once per type: asking ``isinstance`` of an ABC and
``dataclasses.fields`` per value would be most of the walk's cost."""
_FIELDS: dict[type, attrgetter[Any]] = {}
"""A dataclass's fields' values in order, by its class (kind ``_RECORD``)."""


def _kind(value_type: type) -> int:
    kind = _KINDS.get(value_type)
    if kind is None:
        if issubclass(value_type, str):
            kind = _STRING
        elif issubclass(value_type, Mapping):
            kind = _MAPPING
        elif issubclass(value_type, list | tuple):
            kind = _SEQUENCE
        elif is_dataclass(value_type) and (names := [f.name for f in fields(value_type)]):
            # two names or more give a tuple; one name is asked as two, so every getter gives a tuple
            _FIELDS[value_type] = attrgetter(*names) if len(names) > 1 else attrgetter(names[0], names[0])
            kind = _RECORD
        else:
            kind = _OTHER
        _KINDS[value_type] = kind
    return kind


def _gather(value: Any, strings: list[str]) -> None:
    """Append every string ``value`` holds to ``strings`` (the fast pass: no paths)."""
    kind = _kind(type(value))
    if kind == _RECORD:
        items = _FIELDS[type(value)](value)
    elif kind == _SEQUENCE:
        items = value
    elif kind == _MAPPING:
        strings.extend(key for key in value if isinstance(key, str))
        items = value.values()
    elif kind == _STRING:
        strings.append(value)
        return
    else:
        return
    for item in items:
        if type(item) is str:
            strings.append(item)
        elif item is not None:
            _gather(item, strings)


def _named(value: Any, path: str) -> UncleanField | None:
    """The first unclean string in ``value`` (at ``path``), with its path (the slow pass, once one is known)."""
    kind = _kind(type(value))
    if kind == _STRING:
        problem = text_problem(value)
        return None if problem is None else UncleanField(path, problem)
    children: Iterable[tuple[str, Any]] = ()
    if kind == _RECORD:
        children = ((f"{path}.{f.name}".lstrip("."), getattr(value, f.name)) for f in fields(value))
    elif kind == _SEQUENCE:
        children = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    elif kind == _MAPPING:
        for key in value:
            if isinstance(key, str) and (problem := text_problem(key)) is not None:
                return UncleanField(f"{path} key {key!r}".lstrip(), problem)
        children = ((_entry(path, key), item) for key, item in value.items())
    for child_path, child in children:
        if (found := _named(child, child_path)) is not None:
            return found
    return None


def _entry(path: str, key: object) -> str:
    """A mapping entry's path: ``payment.method`` for a name-like key, ``profile['favourite colour']`` else."""
    return f"{path}.{key}".lstrip(".") if isinstance(key, str) and key.isidentifier() else f"{path}[{key!r}]"
