"""Registering test customers the way a person would: RegisterUser through the user service, then waiting
until the query side knows them (so an order placed next is not refused as from an unknown user)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

import redis

from producers.toolkit import EventPublisher
from schemas.topics import USER_COMMANDS
from streams.views import read as views
from tests.stack import wait_until


def uid(prefix: str) -> str:
    """A fresh id for a test's customer, SKU or order (every test module shares one broker and one Redis)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def register_users(
    publisher: EventPublisher,
    store: redis.Redis,
    user_ids: Iterable[str],
    *,
    alive: Callable[[], None] = lambda: None,
    timeout: float = 120,
    **profile: str,
) -> None:
    """Register every user (username = id, address ``<id>@example.com``) and wait for their user views."""
    ids = list(user_ids)
    for user_id in ids:
        publisher.publish(USER_COMMANDS, "RegisterUser", user_id,
                          {"user_id": user_id, "username": user_id, "email": f"{user_id}@example.com",
                           "profile": profile})  # fmt: skip
    publisher.flush()

    def known() -> bool:
        alive()
        return all(views.get_user(store, user_id) is not None for user_id in ids)

    wait_until(known, timeout=timeout, what=f"{len(ids)} users registered", interval=0.2)
