"""What a notice becomes as an e-mail: pure, so the recipient, subject, body and Message-ID follow from the notice.

The Message-ID is derived from the ``notification_id`` alone (a UUID-5 under the sender's domain), and the
``Date`` is the notice's own time, so however often a notice is composed (a redelivery, a replay after a crash
between the hand-over to the mail server and the durable sent-mark) it is the very same message, and a mail
store or client that keys by Message-ID keeps one copy. Text comes from the notice (``message``), which its
producer already wrote for a person; the subject is picked by ``kind``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from streams.domain.messages import NotificationSent

MESSAGE_ID_NAMESPACE = uuid.UUID("0b5f5c1e-8f57-4a8e-9f76-3c0d2a7e4b11")

_SUBJECTS = {
    "welcome": "Welcome to the order pipeline",
    "email_changed": "Please confirm your new e-mail address",
    "order_confirmed": "Your order {order_id} is confirmed",
    "order_cancelled": "Your order {order_id} was cancelled",
}


@dataclass(frozen=True)
class MailConfig:
    """Tunables of e-mail delivery (``PIPELINE_SMTP_*``)."""

    sender: str = "order-pipeline@localhost"
    """The From address; its domain is the right-hand side of every Message-ID."""
    max_age: timedelta = timedelta(days=1)
    """A notice older than this when it is read is not mailed (a first start reading days of the topic, a dead
    letter replayed too late); sent-marks are kept this long, which bounds them."""
    max_waiting: int = 20
    """Most notices one user may have waiting for an address; past that a notice is dead-lettered."""
    remembered: int = 200
    """Most sent-marks one user keeps (the newest), however many notices a day brings."""

    def __post_init__(self) -> None:
        if "@" not in self.sender or self.max_age <= timedelta(0) or self.max_waiting < 0 or self.remembered < 1:
            raise ValueError("sender needs an '@', max_age must be positive, max_waiting >= 0, remembered >= 1")

    @property
    def domain(self) -> str:
        return self.sender.rpartition("@")[2].strip(" >") or "localhost"


@dataclass(frozen=True, kw_only=True)
class Mail:
    """One e-mail, ready for the mail server."""

    notification_id: str
    kind: str
    sender: str
    to: str
    subject: str
    body: str
    message_id: str
    """``<uuid@domain>``: the same for every composition of one notice."""
    date: datetime
    """The notice's ``sent_at``: also what its sent-mark is dated by."""


def message_id(notification_id: str, domain: str) -> str:
    """The Message-ID of a notice: stable per notice id, valid in a header whatever characters the id holds."""
    return f"<{uuid.uuid5(MESSAGE_ID_NAMESPACE, notification_id)}@{domain}>"


def subject(notice: NotificationSent) -> str:
    """The subject line of a notice, by kind (a kind not listed gets a neutral one)."""
    template = _SUBJECTS.get(notice.kind)
    if template is None:
        return f"About your order {notice.order_id}" if notice.order_id else "A notice about your account"
    return template.format(order_id=notice.order_id or "")


def body(notice: NotificationSent) -> str:
    """The text: the notice's message, then what it is about, so support can find it from the mail."""
    lines = [notice.message, ""]
    if notice.order_id:
        lines.append(f"Order: {notice.order_id}")
    lines += [f"Account: {notice.user_id}", f"Reference: {notice.notification_id}", ""]
    return "\n".join(lines)


def compose(notice: NotificationSent, to: str, config: MailConfig) -> Mail:
    """The e-mail a notice becomes, sent to ``to``."""
    return Mail(
        notification_id=notice.notification_id,
        kind=notice.kind,
        sender=config.sender,
        to=to,
        subject=subject(notice),
        body=body(notice),
        message_id=message_id(notice.notification_id, config.domain),
        date=notice.sent_at,
    )
