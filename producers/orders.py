"""Random but plausible orders for the demo and the benchmark's load: one shape of ``PlaceOrder``, made once."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from producers.toolkit import EventPublisher
from schemas.topics import ORDER_COMMANDS


def random_order(
    rng: random.Random, order_id: str, customers: Sequence[str], skus: Sequence[str], *, decline_share: float
) -> tuple[str, dict[str, Any]]:
    """A ``PlaceOrder`` of one to three lines for a random customer; ``decline_share`` of them carry a card the
    provider declines. Returns the customer and the record without its ``requested_at``."""
    user_id = rng.choice(customers)
    lines = rng.sample(list(skus), k=rng.randint(1, min(3, len(skus))))
    token = "tok_decline" if rng.random() < decline_share else "tok_ok"
    return user_id, {
        "order_id": order_id,
        "user_id": user_id,
        "lines": [
            {"sku": sku, "quantity": rng.randint(1, 4), "unit_price_cents": 500 + 250 * i}
            for i, sku in enumerate(lines)
        ],
        "payment": {"method": "card", "token": token},
        "idempotency_key": order_id,
    }


def place_order(
    publisher: EventPublisher, order: dict[str, Any], *, requested_at: int, correlation_id: str | None = None
) -> None:
    """Publish ``order`` keyed by its customer: admission keeps each customer on the partition of that key."""
    publisher.publish(
        ORDER_COMMANDS,
        "PlaceOrder",
        order["user_id"],
        {**order, "requested_at": requested_at},
        correlation_id=correlation_id,
    )
