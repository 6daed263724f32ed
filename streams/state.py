"""Where a step's state lives: a table entry per key (:class:`TableStore`), or split over several
(:class:`~streams.stores.StockStore`); and the table interface both write through (a Faust table, or a dict in tests).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol


class StateTable(Protocol):
    """A table as the edge writes it: a Faust table, or a dict in tests."""

    def get(self, key: str) -> Any: ...
    def __setitem__(self, key: str, value: Any) -> None: ...
    def __delitem__(self, key: str) -> None: ...
    def __contains__(self, key: object) -> bool: ...


class ScannableTable(StateTable, Protocol):
    """A table whose entries can be listed (those of the partitions this worker holds)."""

    def items(self) -> Iterable[tuple[str, Any]]: ...


class StateStore(ABC):
    """Where a step's state lives: loaded before the step decides, saved (when changed) after."""

    @abstractmethod
    def load(self, key: str, message: Any) -> Any:
        """The state the step sees for ``message`` (None: none yet)."""

    @abstractmethod
    def save(self, key: str, before: Any, after: Any) -> None:
        """Write what changed between ``before`` and ``after`` (``after`` None: forget the key)."""

    def take_repaired(self) -> bool:
        """Whether the last :meth:`load` rewrote entries a crash had left torn (they must be made durable too)."""
        return False


class TableStore(StateStore):
    """A step's whole state in one table entry under the message key (JSON, as ``JsonState.to_json``)."""

    def __init__(self, table: StateTable, load_state: Callable[[Mapping[str, Any]], Any]) -> None:
        self.table = table
        self._load_state = load_state

    def load(self, key: str, message: Any) -> Any:
        stored = self.table.get(key)
        return self._load_state(stored) if stored is not None else None

    def save(self, key: str, before: Any, after: Any) -> None:
        if after is None:
            if key in self.table:
                del self.table[key]
        else:
            self.table[key] = after.to_json()
