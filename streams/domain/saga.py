"""The choreography as data: every service, what it consumes, how its state is keyed.

The edge (one Faust agent per service) and the in-memory simulation in the tests read these lists, so both
wire the same thing. Each service keys its state by the Kafka key of what it consumes (``message.key``) and
reacts to the records in ``handles``; anything else goes past it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from streams.domain import (
    admission,
    deliveries,
    emails,
    notifications,
    orders,
    payments,
    reservations,
    stock,
    user_reactions,
    users,
)
from streams.domain.core import Decision, StepContext
from streams.domain.messages import JsonState, Message

St = TypeVar("St", bound=JsonState)


@dataclass(frozen=True)
class Service(Generic[St]):
    """One saga participant: its name, table, state type, the records it handles and its step."""

    name: str
    table: str
    """Suggested Faust table name, ``<context>_<state>``."""
    key: str
    """What its state is keyed by (for people: the key is always ``message.key``)."""
    state_type: type[St]
    handles: frozenset[str]
    decide: Callable[[St | None, Message, StepContext], Decision[St]]

    def load(self, data: Mapping[str, Any]) -> St:
        """A state from its ``to_json`` form."""
        return self.state_type.from_json(data)


ADMISSION = Service(
    "admission", "orders_customers", "user id", admission.CustomerState, admission.HANDLES, admission.decide
)
ORDER_SAGA = Service("order-saga", "orders_sagas", "order id", orders.OrderSaga, orders.HANDLES, orders.decide)
RESERVATIONS = Service(
    "inventory-reservations",
    "inventory_reservations",
    "order id",
    reservations.OrderReservation,
    reservations.HANDLES,
    reservations.decide,
)
STOCK = Service("inventory-stock", "inventory_stock", "sku", stock.Stock, stock.HANDLES, stock.decide)
PAYMENTS = Service(
    "payments", "payments_payments", "order id", payments.PaymentState, payments.HANDLES, payments.decide
)
NOTIFICATIONS = Service(
    "notifications",
    "notifications_notices",
    "order id",
    notifications.NoticeState,
    notifications.HANDLES,
    notifications.decide,
)

DELIVERIES = Service(
    "mail-deliveries", "notifications_mailboxes", "user id", deliveries.Mailbox, deliveries.HANDLES, deliveries.decide
)
"""E-mail delivery of notices (only where a mail server is configured): notifications.events.v1 and
users.events.v1 in; notices that waited for an address back to notifications.events.v1; mail out."""

SERVICES: tuple[Service[Any], ...] = (ADMISSION, ORDER_SAGA, RESERVATIONS, STOCK, PAYMENTS, NOTIFICATIONS)

USERS = Service("users", "users_users", "user id", users.UserHistory, users.HANDLES, users.decide)
"""The event-sourced user aggregate: users.commands.v1 in (commands and claim answers); users.events.v1,
users.snapshots.v1 and users.emails.v1 out."""
EMAILS = Service("user-emails", "users_emails", "e-mail", emails.EmailOwner, emails.HANDLES, emails.decide)
"""E-mail ownership: users.emails.v1 in, answers to users.commands.v1 out."""
USER_REACTIONS = Service(
    "user-reactions",
    "users_reactions",
    "user id",
    user_reactions.ReactionState,
    user_reactions.HANDLES,
    user_reactions.decide,
)
"""Onboarding and notices: users.events.v1 in; users.events.v1, notifications.events.v1, users.commands.v1 out."""

USER_SERVICES: tuple[Service[Any], ...] = (USERS, EMAILS, USER_REACTIONS)
"""The user service's steps; apart from SERVICES, which is the order saga (and drives its simulation)."""
