"""E-mail delivery end to end: the real workers (the notifications worker with ``PIPELINE_SMTP_HOST`` set) hand
welcome and order notices to a real SMTP server started here (aiosmtpd), once per notice id; a notice the server
refuses is dead-lettered with the reason, the user's and everyone's later notices still go out, and a replay of
the dead letter mails it once the server takes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller

from common.admin import admin_client, apply_topics
from common.settings import Settings
from consumers.deadletter import DeadLetter, read_dead_letters, replay
from producers.toolkit import EventPublisher
from schemas.topics import INVENTORY_COMMANDS, NOTIFICATION_EVENTS, ORDER_COMMANDS, USER_COMMANDS
from streams.domain.mail import message_id
from streams.views import read as views
from tests.seeding import uid
from tests.stack import free_port, wait_until
from tests.workers import Pipeline, running_pipeline

SENDER = "shop@pipeline.test"
BOUNCING = "bounce-"
"""Addresses starting so are refused by the server (550) while it refuses them."""
BREAKER_RESET_S = 1.0


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps every message it accepts and refuses the bouncing addresses on demand."""

    refuse_bouncing: bool = True
    received: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:  # noqa: N802
        if self.refuse_bouncing and address.startswith(BOUNCING):
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.received.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def mails_of(self, notification_id: str) -> list[tuple[list[str], EmailMessage]]:
        with self.lock:
            return [(to, m) for to, m in self.received if m["X-Pipeline-Notification-Id"] == notification_id]


@dataclass
class MailServer:
    """The SMTP server on 127.0.0.1:``port``, which a test may stop and start again."""

    inbox: Inbox
    port: int
    controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture(scope="module")
def mail_server() -> Iterator[MailServer]:
    server = MailServer(Inbox(), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def inbox(mail_server: MailServer) -> tuple[Inbox, int]:
    return mail_server.inbox, mail_server.port


@pytest.fixture(scope="module")
def pipeline(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, inbox: tuple[Inbox, int]
) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    with running_pipeline(
        settings,
        tmp_path_factory.mktemp("mail"),
        PIPELINE_SMTP_HOST="127.0.0.1",
        PIPELINE_SMTP_PORT=str(inbox[1]),
        PIPELINE_SMTP_FROM=SENDER,
        PIPELINE_SMTP_TLS="none",
        PIPELINE_SMTP_RETRY_BASE_S="0.05",
        PIPELINE_SMTP_BREAKER_RESET_S=str(BREAKER_RESET_S),
    ) as running:
        yield running


def now_ms() -> int:
    return int(time.time() * 1000)


def register(publisher: EventPublisher, user_id: str, email: str) -> None:
    publisher.publish(USER_COMMANDS, "RegisterUser", user_id,
                      {"user_id": user_id, "username": user_id, "email": email, "profile": {}})  # fmt: skip
    publisher.flush()


def notice(publisher: EventPublisher, user_id: str, notification_id: str, email: str | None = None) -> None:
    """A NotificationSent published as any service would record one."""
    publisher.publish(NOTIFICATION_EVENTS, "NotificationSent", user_id,
                      {"notification_id": notification_id, "user_id": user_id, "order_id": None, "kind": "test",
                       "message": f"A test notice for {user_id}.", "sent_at": now_ms(), "email": email})  # fmt: skip
    publisher.flush()


def dead_letters_of(settings: Settings, user_id: str) -> list[DeadLetter]:
    return [
        letter
        for letter in read_dead_letters(settings, [NOTIFICATION_EVENTS.dead_letter_name])
        if letter.key_text == user_id
    ]


def wait_mail(pipeline: Pipeline, inbox: Inbox, notification_id: str) -> tuple[list[str], EmailMessage]:
    def arrived() -> bool:
        pipeline.assert_alive()
        return bool(inbox.mails_of(notification_id))

    wait_until(arrived, timeout=90, what=f"the mail of notice {notification_id}", interval=0.2)
    return inbox.mails_of(notification_id)[0]


def test_welcome_and_order_confirmation_are_mailed_once_each(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, inbox: tuple[Inbox, int]
) -> None:
    server = inbox[0]
    user_id = uid("mail")
    address = f"{user_id}@example.com"
    register(publisher, user_id, address)

    to, welcome = wait_mail(pipeline, server, f"{user_id}:welcome")
    assert to == [address] and welcome["To"] == address and welcome["From"] == SENDER
    assert welcome["Subject"] == "Welcome to the order pipeline"
    assert user_id in welcome.get_body().get_content()  # type: ignore[union-attr]
    assert welcome["Message-ID"] == message_id(f"{user_id}:welcome", "pipeline.test")

    sku = uid("sku")
    publisher.publish(INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": 5, "reason": "test"})
    order_id = uid("o")
    publisher.publish(ORDER_COMMANDS, "PlaceOrder", user_id,
                      {"order_id": order_id, "user_id": user_id,
                       "lines": [{"sku": sku, "quantity": 1, "unit_price_cents": 1250}],
                       "payment": {"method": "card", "token": "tok_ok"}, "idempotency_key": order_id,
                       "requested_at": now_ms()})  # fmt: skip
    publisher.flush()

    to, confirmed = wait_mail(pipeline, server, f"{order_id}:order_confirmed")
    assert to == [address], "an order notice goes to the address the user registered with"
    assert confirmed["Subject"] == f"Your order {order_id} is confirmed"
    text = confirmed.get_body().get_content()  # type: ignore[union-attr]
    assert f"Your order {order_id} is confirmed." in text and user_id in text
    assert confirmed["Message-ID"] == message_id(f"{order_id}:order_confirmed", "pipeline.test")
    wait_until(lambda: (views.get_order(store, order_id) or {}).get("status") == "CONFIRMED", timeout=30,
               what=f"order {order_id} projected as confirmed")  # fmt: skip

    # the welcome again, as a redelivery or a producer's replay would bring it; then a last notice of the same
    # user (same partition, read after it): once that is mailed, the copy has been handled, and sent nothing
    notice(publisher, user_id, f"{user_id}:welcome", email=address)
    notice(publisher, user_id, f"{user_id}:after-the-copy")
    wait_mail(pipeline, server, f"{user_id}:after-the-copy")
    assert len(server.mails_of(f"{user_id}:welcome")) == 1, "a notice already mailed is not mailed again"
    assert len(server.mails_of(f"{order_id}:order_confirmed")) == 1


def test_a_refused_notice_is_dead_lettered_without_holding_later_ones_and_replays(
    pipeline: Pipeline, publisher: EventPublisher, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server = inbox[0]
    bouncing, other = uid("bouncing"), uid("other")
    register(publisher, bouncing, f"{BOUNCING}{bouncing}@example.com")
    register(publisher, other, f"{other}@example.com")

    found: dict[str, Any] = {}

    def dead_lettered() -> bool:
        pipeline.assert_alive()
        found["letters"] = dead_letters_of(settings, bouncing)
        return bool(found["letters"])

    wait_until(dead_lettered, timeout=90, what=f"{bouncing}'s welcome dead-lettered", interval=0.5)
    (letter,) = found["letters"]
    assert letter.agent == "deliver_notices" and "550" in letter.error and "no such mailbox" in letter.error
    assert letter.source_topic == NOTIFICATION_EVENTS.name

    # neither the topic nor the user's key waits behind it
    wait_mail(pipeline, server, f"{other}:welcome")
    notice(publisher, bouncing, f"{bouncing}:elsewhere", email=f"{bouncing}@example.org")
    wait_mail(pipeline, server, f"{bouncing}:elsewhere")
    assert not server.mails_of(f"{bouncing}:welcome")

    # the server takes the address again: the dead letter, replayed, is mailed (it was never marked as sent)
    server.refuse_bouncing = False
    assert replay(settings, [letter]) == 1
    to, welcome = wait_mail(pipeline, server, f"{bouncing}:welcome")
    assert to == [f"{BOUNCING}{bouncing}@example.com"]
    assert welcome["Message-ID"] == message_id(f"{bouncing}:welcome", "pipeline.test")


def test_with_the_mail_server_down_notices_are_still_recorded_and_those_not_mailed_are_kept(
    pipeline: Pipeline,
    publisher: EventPublisher,
    settings: Settings,
    store: redis.Redis,
    mail_server: MailServer,
) -> None:
    user_id = uid("down")
    mail_server.stop()
    try:
        register(publisher, user_id, f"{user_id}@example.com")

        def recorded_and_dead_lettered() -> bool:
            pipeline.assert_alive()
            projected = any(n["notification_id"] == f"{user_id}:welcome" for n in views.notifications(store, user_id))
            return projected and bool(dead_letters_of(settings, user_id))

        wait_until(recorded_and_dead_lettered, timeout=90, what=f"{user_id}'s welcome projected and dead-lettered")
        (letter,) = dead_letters_of(settings, user_id)
        assert "mail server unavailable" in letter.error, letter.error
    finally:
        mail_server.start()

    # the breaker lets a probe through BREAKER_RESET_S after it opened: notices keep coming until one is mailed
    probes: list[str] = []

    def probe_mailed() -> bool:
        pipeline.assert_alive()
        if any(mail_server.inbox.mails_of(p) for p in probes):
            return True
        probes.append(f"{user_id}:probe-{len(probes)}")
        notice(publisher, user_id, probes[-1])
        return False

    wait_until(probe_mailed, timeout=90, what="a notice mailed once the server is back", interval=0.5)
    assert replay(settings, [letter]) == 1
    to, _ = wait_mail(pipeline, mail_server.inbox, f"{user_id}:welcome")
    assert to == [f"{user_id}@example.com"]
