"""Record name → message class: every :class:`Message` the context modules declare, found where it is declared,
so a new record is registered by writing its class in its context's module."""

from __future__ import annotations

from types import ModuleType

from streams.domain.messages import inventory, notifications, orders, payments, users
from streams.domain.messages.base import Message

CONTEXTS: tuple[ModuleType, ...] = (orders, inventory, payments, notifications, users)
"""The modules of records, one per bounded context (and Avro namespace ``pipeline.<context>``)."""


def _declared_in(module: ModuleType) -> list[type[Message]]:
    """The message classes a module defines (not those it imports), in the order it defines them."""
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Message) and obj.__module__ == module.__name__
    ]


MESSAGE_TYPES: dict[str, type[Message]] = {cls.__name__: cls for module in CONTEXTS for cls in _declared_in(module)}
"""Avro short name → message class, for every record a step reads or writes."""


class UnknownMessage(KeyError):
    """A record name no message class carries (a programming error at the edge: check ``HANDLES`` first)."""


def message_type(name: str) -> type[Message]:
    """The class of a record given by short (``OrderPlaced``) or full (``pipeline.orders.OrderPlaced``) name."""
    try:
        return MESSAGE_TYPES[name.rpartition(".")[2]]
    except KeyError:
        raise UnknownMessage(name) from None
