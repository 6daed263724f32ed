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
    key_field: str = ""
    """The value field whose content is the message key (``order_id``); empty for raw topics."""
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
    records=("PlaceOrder", "ReleaseHeldOrders"),
    description="Commands to the order service, keyed by user id: orders are admitted per customer, against the "
    "order service's own view of that customer.",
    key_field="user_id",
)
ORDER_EVENTS = TopicSpec(
    "orders.events.v1",
    records=("OrderPlaced", "OrderRejected", "OrderConfirmed", "OrderCancelled", "OrderCompensationFailed"),
    description="The order aggregate's facts, keyed by order id.",
    retention_ms=-1,
    key_field="order_id",
)
ORDER_DEADLINES = TopicSpec(
    "orders.deadlines.v1",
    records=("OrderDeadlineReached",),
    description="Saga deadlines that passed, found by the order service's timer, keyed by order id.",
    retention_ms=1 * DAY_MS,
    key_field="order_id",
)
INVENTORY_COMMANDS = TopicSpec(
    "inventory.commands.v1",
    records=("AddStock", "ReserveStock", "ReleaseStock", "CommitStock"),
    description="Commands to the stock of one SKU, keyed by SKU.",
    key_field="sku",
)
INVENTORY_STOCK = TopicSpec(
    "inventory.stock.v1",
    records=("StockAdded",),
    description="Stock arriving for a SKU, keyed by SKU.",
    retention_ms=-1,
    key_field="sku",
)
INVENTORY_EVENTS = TopicSpec(
    "inventory.events.v1",
    records=(
        "StockLineReserved",
        "StockLineRejected",
        "StockLineReleased",
        "StockLineCommitted",
        "InventoryReserved",
        "InventoryReservationFailed",
        "InventoryReleased",
        "InventoryCommitted",
    ),
    description="Per-line and per-order reservations, releases and sales of stock, keyed by order id.",
    retention_ms=-1,
    key_field="order_id",
)
PAYMENT_COMMANDS = TopicSpec(
    "payments.commands.v1",
    records=("RetryPayment",),
    description="Commands to the payment service, keyed by order id: its timer's retries of parked charges.",
    key_field="order_id",
)
PAYMENT_EVENTS = TopicSpec(
    "payments.events.v1",
    records=("PaymentSucceeded", "PaymentFailed", "PaymentPending", "PaymentRefunded", "PaymentRefundFailed"),
    description="Charges and refunds at the payment provider, keyed by order id.",
    retention_ms=-1,
    key_field="order_id",
)
NOTIFICATION_EVENTS = TopicSpec(
    "notifications.events.v1",
    records=("NotificationSent",),
    description="Notices recorded for users, keyed by user id.",
    key_field="user_id",
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
        "EmailClaimed",
        "EmailClaimRefused",
    ),
    description="The user aggregate's inbox, keyed by user id: its commands and the answers to its e-mail claims. "
    "One topic, so a replay after a crash re-sends a user's events before anything newer is decided.",
    key_field="user_id",
)
USER_EMAILS = TopicSpec(
    "users.emails.v1",
    records=("ClaimEmail", "ReleaseEmail"),
    description="Claims and releases of e-mail addresses, keyed by the normalised (lower-cased) address: the one "
    "place that decides who owns an address, so no two users ever hold the same one.",
    key_field="email",
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
    key_field="user_id",
)
USER_SNAPSHOTS = TopicSpec(
    "users.snapshots.v1",
    records=("UserSnapshot",),
    description="The newest snapshot of each user aggregate, keyed by user id (compacted).",
    compacted=True,
    retention_ms=-1,
    dead_letter=False,
    key_field="user_id",
)

VIEWS_STOCK_LINES = TopicSpec(
    "order-pipeline-views-stock-lines",
    records=("StockLineReserved", "StockLineRejected", "StockLineReleased", "StockLineCommitted"),
    description="The view service's own: the stock lines of inventory.events.v1 as they were (value and headers), "
    "re-keyed by SKU so that each SKU's stock view is folded on one partition.",
    key_field="sku",
    retention_ms=DAY_MS,
)
"""Internal to the view service (not a public topic: no other service reads it)."""

TOPICS: tuple[TopicSpec, ...] = (
    ORDER_COMMANDS,
    ORDER_EVENTS,
    ORDER_DEADLINES,
    INVENTORY_COMMANDS,
    INVENTORY_STOCK,
    INVENTORY_EVENTS,
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    NOTIFICATION_EVENTS,
    USER_COMMANDS,
    USER_EMAILS,
    USER_EVENTS,
    USER_SNAPSHOTS,
)

_BY_NAME = {t.name: t for t in (*TOPICS, VIEWS_STOCK_LINES)}


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
        for t in (*TOPICS, VIEWS_STOCK_LINES)
        if t.dead_letter
    )


def records_by_topic() -> dict[str, tuple[str, ...]]:
    """Topic name → the record short names it may carry (the catalog's topic map)."""
    return {t.name: t.records for t in TOPICS}


_BY_RECORD = {record: t for t in TOPICS for record in t.records}


def topic_for_record(record: str) -> TopicSpec:
    """The one topic a record is published to: every record belongs to exactly one topic."""
    try:
        return _BY_RECORD[record]
    except KeyError:
        raise UnknownTopic(f"(no topic carries {record})") from None


APP_PREFIX = "order-pipeline"
"""Faust app ids are ``order-pipeline-<service>``; their internal topics start with it."""


@dataclass(frozen=True)
class TableSpec:
    """A service's table: Faust keeps it in a compacted changelog topic, pre-created like every other topic."""

    service: str
    name: str
    description: str

    @property
    def changelog(self) -> str:
        return f"{APP_PREFIX}-{self.service}-{self.name}-changelog"


TABLES: tuple[TableSpec, ...] = (
    TableSpec("orders", "orders_customers", "each customer as the order service sees them (user id)"),
    TableSpec("orders", "orders_sagas", "each order's saga state and timeline (order id)"),
    TableSpec("orders", "orders_deadlines", "deadlines of sagas not yet terminal (order id)"),
    TableSpec("orders", "orders_admission_holds", "when each customer's oldest held order is due (user id)"),
    TableSpec("inventory", "inventory_reservations", "each order's line reservations (order id)"),
    TableSpec("inventory", "inventory_stock", "each SKU's stock levels and recent additions (SKU)"),
    TableSpec("inventory", "inventory_holds", "what each SKU holds or held for each order (SKU/order id)"),
    TableSpec("payments", "payments_payments", "each order's charge and refunds (order id)"),
    TableSpec("payments", "payments_parked", "charges parked while the provider is down, since when (order id)"),
    TableSpec("notifications", "notifications_notices", "which notices each order has had (order id)"),
    TableSpec(
        "notifications",
        "notifications_mailboxes",
        "each user's address, notices waiting for one, recent sent-marks (user id); with PIPELINE_SMTP_HOST only",
    ),
    TableSpec("users", "users_users", "each user's newest snapshot, events since, claim in flight (user id)"),
    TableSpec("users", "users_emails", "who owns each e-mail address (lower-cased address)"),
    TableSpec("users", "users_reactions", "the last user event each user's reactions answered (user id)"),
    TableSpec("views", "views_orders", "each order's view with its timeline (order id)"),
    TableSpec("views", "views_stock", "each SKU's stock view (SKU)"),
    TableSpec("views", "views_users", "each user's view and newest rejected commands (user id)"),
    TableSpec("views", "views_notices", "each user's newest notifications (user id)"),
    # every service: its agents' keys held back behind a dead letter (streams.domain.parking), "<agent>/<key>"
    *(
        TableSpec(s, f"{s}_parked_keys", "keys held back behind a dead letter, each with its queue (<agent>/<key>)")
        for s in ("orders", "inventory", "payments", "notifications", "users")
    ),
)

SAGA_SERVICES: tuple[str, ...] = ("orders", "inventory", "payments", "notifications", "users")
"""The services that take part in the saga (their agents park keys behind dead letters)."""
SERVICES: tuple[str, ...] = (*SAGA_SERVICES, "views")
"""Each a Faust app and worker process of its own; ``views`` keeps the query side's views and mirrors them to Redis."""


def parked_keys_table(service: str) -> TableSpec:
    """The table of ``service``'s parked keys (see :mod:`streams.domain.parking`)."""
    return table(service, f"{service}_parked_keys")


def table(service: str, name: str) -> TableSpec:
    """The declaration of ``service``'s table ``name``."""
    for spec in TABLES:
        if spec.service == service and spec.name == name:
            return spec
    raise KeyError(f"{service} declares no table {name!r}")


def internal_topics() -> tuple[TopicSpec, ...]:
    """The Faust apps' own topics: one compacted changelog per table, one leader topic per app."""
    changelogs = tuple(
        TopicSpec(
            t.changelog,
            records=(),
            description=f"changelog of {t.name}: {t.description}",
            compacted=True,
            retention_ms=-1,
            dead_letter=False,
        )
        for t in TABLES
    )
    leaders = tuple(
        TopicSpec(
            f"{APP_PREFIX}-{s}-__assignor-__leader",
            records=(),
            description=f"leader election of {s}",
            partitions=1,
            dead_letter=False,
        )
        for s in SERVICES
    )
    return changelogs + leaders + (VIEWS_STOCK_LINES,)
