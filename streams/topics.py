"""Every topic of the pipeline, declared once.

Pure declarations: no Kafka or Faust import here, so the CLI, the producers, the consumers and the Faust app
all read the same list. A topic's name carries its major version; the records it may carry are named by their
Avro short names (``OrderPlaced``), and every version of those records must stay compatible both ways
(``pipeline schemas check``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

PARTITIONS = 6
"""Every saga topic has the same partition count, so streams keyed by order id are co-partitioned."""

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic: its name, shape, retention and the records it may carry."""

    name: str
    records: tuple[str, ...]
    description: str
    partitions: int = PARTITIONS
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    """-1 keeps messages forever."""
    dead_letter: bool = True
    """Whether a ``<name>.dlq`` topic takes its undecodable or unhandled messages."""
    extra_config: Mapping[str, str] = field(default_factory=dict)

    @property
    def dead_letter_name(self) -> str:
        return f"{self.name}.dlq"

    def config(self) -> dict[str, str]:
        """The topic-level configs the broker should hold for this topic."""
        cfg = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(self.retention_ms),
        }
        cfg.update(self.extra_config)
        return cfg


ORDER_COMMANDS = TopicSpec(
    "orders.commands.v1",
    records=("PlaceOrder",),
    description="Commands to the order service, keyed by order id.",
)
ORDER_EVENTS = TopicSpec(
    "orders.events.v1",
    records=("OrderPlaced", "OrderRejected", "OrderConfirmed", "OrderCancelled"),
    description="The order aggregate's facts, keyed by order id.",
    retention_ms=-1,
)
INVENTORY_COMMANDS = TopicSpec(
    "inventory.commands.v1",
    records=("AddStock",),
    description="Stock-keeping commands, keyed by SKU.",
)
INVENTORY_EVENTS = TopicSpec(
    "inventory.events.v1",
    records=(
        "StockAdded",
        "InventoryReserved",
        "InventoryReservationFailed",
        "InventoryReleased",
        "InventoryCommitted",
    ),
    description="Reservations, releases and sales of stock, keyed by order id (StockAdded by SKU).",
    retention_ms=-1,
)
PAYMENT_EVENTS = TopicSpec(
    "payments.events.v1",
    records=("PaymentSucceeded", "PaymentFailed", "PaymentRefunded"),
    description="Charges and refunds at the payment provider, keyed by order id.",
    retention_ms=-1,
)
NOTIFICATION_EVENTS = TopicSpec(
    "notifications.events.v1",
    records=("NotificationSent",),
    description="Notices recorded for users, keyed by user id.",
)
USER_COMMANDS = TopicSpec(
    "users.commands.v1",
    records=(
        "RegisterUser",
        "UpdateUserProfile",
        "ChangeEmail",
        "DeactivateUser",
        "ReactivateUser",
        "RecordLogin",
    ),
    description="Commands to the user aggregate, keyed by user id.",
)
USER_EVENTS = TopicSpec(
    "users.events.v1",
    records=(
        "UserRegistered",
        "UserProfileUpdated",
        "UserEmailChanged",
        "UserDeactivated",
        "UserReactivated",
        "UserLoggedIn",
        "UserOnboardingStarted",
        "UserCommandRejected",
    ),
    description="The user aggregate's event-sourced history, keyed by user id; kept forever.",
    retention_ms=-1,
)
USER_SNAPSHOTS = TopicSpec(
    "users.snapshots.v1",
    records=("UserSnapshot",),
    description="The newest snapshot of each user aggregate, keyed by user id (compacted).",
    compacted=True,
    retention_ms=-1,
    dead_letter=False,
)

TOPICS: tuple[TopicSpec, ...] = (
    ORDER_COMMANDS,
    ORDER_EVENTS,
    INVENTORY_COMMANDS,
    INVENTORY_EVENTS,
    PAYMENT_EVENTS,
    NOTIFICATION_EVENTS,
    USER_COMMANDS,
    USER_EVENTS,
    USER_SNAPSHOTS,
)

_BY_NAME = {t.name: t for t in TOPICS}


class UnknownTopic(KeyError):
    """A topic name that no declaration carries."""

    def __str__(self) -> str:
        return f"unknown topic {self.args[0]!r}; declared topics: {', '.join(sorted(_BY_NAME))}"


def topic(name: str) -> TopicSpec:
    """The declaration of ``name``, or :class:`UnknownTopic`."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownTopic(name) from None


def dead_letter_topics() -> tuple[TopicSpec, ...]:
    """One dead-letter topic per source topic that has one; raw bytes, kept 30 days."""
    return tuple(
        TopicSpec(
            t.dead_letter_name,
            records=(),
            description=f"Messages of {t.name} that could not be decoded or handled; the reason is in headers.",
            partitions=t.partitions,
            retention_ms=30 * DAY_MS,
            dead_letter=False,
        )
        for t in TOPICS
        if t.dead_letter
    )


def records_by_topic() -> dict[str, tuple[str, ...]]:
    """Topic name → the record short names it may carry (the catalog's topic map)."""
    return {t.name: t.records for t in TOPICS}
