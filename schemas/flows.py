"""Who sends which records and who receives which topics: the other half of the topic contract.

Pure declarations, like :mod:`schemas.topics`, so the AsyncAPI document (``pipeline schemas asyncapi``) is made
from data and not from reading the wiring. They are held true by tests: what each service's agents subscribe to
(``streams/services.py``, ``streams/view_service.py``) must equal its ``receives``
(tests/agents/test_flows.py), and every record of every topic has a sender (tests/unit/test_flows.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.topics import (
    INVENTORY_COMMANDS,
    INVENTORY_EVENTS,
    INVENTORY_STOCK,
    NOTIFICATION_EVENTS,
    ORDER_COMMANDS,
    ORDER_DEADLINES,
    ORDER_EVENTS,
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    TOPICS,
    USER_COMMANDS,
    USER_EMAILS,
    USER_EVENTS,
    USER_SNAPSHOTS,
    TopicSpec,
    topic_for_record,
)


@dataclass(frozen=True)
class Party:
    """A process that writes to or reads from the public topics: a service, the gateway, the CLI."""

    name: str
    description: str
    sends: tuple[str, ...] = ()
    """Record short names it publishes (each to the one topic that carries it)."""
    receives: tuple[TopicSpec, ...] = ()
    """Topics its consumers or agents subscribe to."""

    def sent_topics(self, topics: Sequence[TopicSpec] = TOPICS) -> dict[str, tuple[str, ...]]:
        """Topic name → the records this party sends there, in topic declaration order."""
        out: dict[str, tuple[str, ...]] = {}
        for spec in topics:
            mine = tuple(r for r in spec.records if r in self.sends)
            if mine:
                out[spec.name] = mine
        return out


PARTIES: tuple[Party, ...] = (
    Party(
        "gateway",
        "The HTTP gateway: places orders and submits user commands for authenticated callers.",
        sends=(
            "PlaceOrder",
            "RegisterUser",
            "UpdateUserProfile",
            "ChangeEmail",
            "DeactivateUser",
            "ReactivateUser",
            "RecordLogin",
        ),
    ),
    Party(
        "cli",
        "The pipeline CLI: `pipeline order`, the demo and load generator (orders, stock, users); "
        "`pipeline publish` can send any record by hand, `pipeline tail` reads any topic; `pipeline user ID "
        "--replay` loads a user from its newest snapshot and the events since.",
        sends=("PlaceOrder", "AddStock", "RegisterUser"),
        receives=(USER_SNAPSHOTS, USER_EVENTS),
    ),
    Party(
        "orders",
        "The order service: admits orders per customer, runs each order's saga, reports passed deadlines "
        "and releases held orders (its timers).",
        sends=(
            "OrderPlaced",
            "OrderRejected",
            "OrderConfirmed",
            "OrderCancelled",
            "OrderCompensationFailed",
            "OrderDeadlineReached",
            "ReleaseHeldOrders",
        ),
        receives=(USER_EVENTS, ORDER_COMMANDS, ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_EVENTS, ORDER_DEADLINES),
    ),
    Party(
        "inventory",
        "The inventory service: reserves, releases and commits each order's stock, line by line per SKU.",
        sends=(
            "ReserveStock",
            "ReleaseStock",
            "CommitStock",
            "StockAdded",
            *INVENTORY_EVENTS.records,  # every line and order fact of its own topic
        ),
        receives=(ORDER_EVENTS, INVENTORY_EVENTS, INVENTORY_COMMANDS),
    ),
    Party(
        "payments",
        "The payment service: charges and refunds at the provider; its timer retries parked charges.",
        sends=(
            "PaymentSucceeded",
            "PaymentFailed",
            "PaymentPending",
            "PaymentRefunded",
            "PaymentRefundFailed",
            "RetryPayment",
        ),
        receives=(ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_COMMANDS),
    ),
    Party(
        "notifications",
        "The notification service: records notices of orders (and, with PIPELINE_SMTP_HOST set, e-mails them: "
        "that agent also reads notifications.events.v1 and users.events.v1).",
        sends=("NotificationSent",),
        receives=(ORDER_EVENTS, NOTIFICATION_EVENTS, USER_EVENTS),
    ),
    Party(
        "users",
        "The user service: the event-sourced user aggregate, e-mail ownership, onboarding reactions.",
        sends=(
            "UserRegistered",
            "UserProfileUpdated",
            "UserEmailChanged",
            "UserDeactivated",
            "UserReactivated",
            "UserLoggedIn",
            "UserOnboardingStarted",
            "UserCommandRejected",
            "UserSnapshot",
            "ClaimEmail",
            "ReleaseEmail",
            "EmailClaimed",
            "EmailClaimRefused",
            "UpdateUserProfile",
            "NotificationSent",
        ),
        receives=(USER_COMMANDS, USER_EMAILS, USER_EVENTS),
    ),
    Party(
        "views",
        "The view service: folds events into the query side's views and mirrors them to Redis.",
        receives=(ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_EVENTS, INVENTORY_STOCK, USER_EVENTS, NOTIFICATION_EVENTS),
    ),
)


def senders_of(record: str) -> tuple[str, ...]:
    """The names of the parties that send ``record``."""
    return tuple(p.name for p in PARTIES if record in p.sends)


def problems() -> list[str]:
    """What makes the declarations untrue to :mod:`schemas.topics`: a record no topic carries, a record with
    no sender, a topic nobody reads. Empty when they hold."""
    found: list[str] = []
    for party in PARTIES:
        for record in party.sends:
            try:
                topic_for_record(record)
            except KeyError:
                found.append(f"{party.name} sends {record}, which no topic carries")
    found += [f"nobody sends {r} ({t.name})" for t in TOPICS for r in t.records if not senders_of(r)]
    read = {spec.name for p in PARTIES for spec in p.receives}
    found += [f"nobody receives {t.name}" for t in TOPICS if t.name not in read]
    return found
