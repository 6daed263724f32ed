"""The notifications context's record (``pipeline.notifications``): a notice recorded for a user."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from streams.domain.messages.base import Message


@dataclass(frozen=True, kw_only=True)
class NotificationSent(Message):
    """Event: a notice was recorded for a user; keyed by user id."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "sent_at"
    notification_id: str
    user_id: str
    order_id: str | None = None
    kind: str
    message: str
    sent_at: datetime
    email: str | None = None
    """Where to e-mail the notice, when its producer knew the address (v2); None: the user's latest known one."""
