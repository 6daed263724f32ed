"""The notifications view, pure: each user's newest notices, each ``notification_id`` taken once.

Why it converges to the log whatever the interleaving of topics: notifications are keyed by user id, so one
user's notices arrive in log order in every run; each ``notification_id`` is taken once.
"""

from __future__ import annotations

from typing import Any

from streams.views.events import HIDDEN_FIELDS, Event, required_str

NOTIFICATIONS_KEPT = 100
"""How many notices a user's list keeps (the newest)."""


def notification_entry(event: Event) -> tuple[str, str, dict[str, Any]]:
    """(user id, notification id, list entry) of a NotificationSent."""
    user_id = required_str(event, "user_id")
    notification_id = required_str(event, "notification_id")
    entry = {k: v for k, v in event.value.items() if k not in HIDDEN_FIELDS}
    return user_id, notification_id, entry
