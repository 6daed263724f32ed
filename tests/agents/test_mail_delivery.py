"""The mail agent's edge: the real StepRunner, Outbox, codec and deliveries step, with a stand-in mail server.

What only the edge shows: the sent-mark is a table write made durable with the input (so the runner's
redelivery finds it), an undeliverable notice becomes a dead letter that parks nothing, and a notice that waited
for an address goes back to its topic, where the agent reads it and mails it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest

from streams.domain.core import SagaConfig
from streams.domain.mail import MailConfig
from streams.domain.messages import NotificationSent, UserRegistered
from streams.domain.saga import DELIVERIES
from streams.incoming import Incoming
from streams.mailer import MailDelivery, MailRefused
from streams.outbox import Outbox
from streams.resilience import CircuitBreaker, RetryPolicy
from streams.runner import StepRunner
from streams.services import _step
from tests.agents.harness import CATALOG, CODEC, Recorder, RecordingTable, incoming

pytestmark = pytest.mark.agents


@dataclass
class MailServer:
    refuse: str = ""
    """Refuse (550) mail to addresses starting with this ('' refuses none)."""

    def __post_init__(self) -> None:
        self.sent: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> Any:
        if self.refuse and str(message["To"]).startswith(self.refuse):
            raise MailRefused("550 no such mailbox")
        self.sent.append(message)


@dataclass
class MailEdge:
    runner: StepRunner
    table: RecordingTable
    parked: RecordingTable
    recorder: Recorder
    server: MailServer

    @classmethod
    def build(cls, server: MailServer) -> MailEdge:
        recorder = Recorder()
        table, parked = RecordingTable(recorder), RecordingTable(recorder)
        delivery = MailDelivery(server.send, RetryPolicy(attempts=2, base_s=0.001), CircuitBreaker("mail-server"))
        step = _step(
            "deliver_notices",
            DELIVERIES,
            SagaConfig(),
            run_effects=delivery.run_effects,
            mail=MailConfig(sender="shop@shop.test"),
        )
        outbox = Outbox(CODEC, CATALOG, recorder.send, source="/order-pipeline/notifications")
        runner = StepRunner(step, table, CODEC, outbox, make_durable=recorder.make_durable, parked=parked)
        return cls(runner, table, parked, recorder, server)

    def mailed(self, notification_id: str) -> int:
        return sum(1 for m in self.server.sent if m["X-Pipeline-Notification-Id"] == notification_id)


def now() -> datetime:
    return datetime.now(UTC)


def order_notice(order_id: str, user_id: str = "u-1", email: str | None = None) -> NotificationSent:
    return NotificationSent(
        notification_id=f"{order_id}:order_confirmed",
        user_id=user_id,
        order_id=order_id,
        kind="order_confirmed",
        message=f"Your order {order_id} is confirmed.",
        sent_at=now(),
        email=email,
    )


def registered(user_id: str = "u-1", email: str = "ann@example.com") -> UserRegistered:
    return UserRegistered(
        user_id=user_id, version=1, username="ann", email=email, profile={}, registered_at=now() - timedelta(hours=1)
    )


async def test_a_mail_is_marked_durably_before_the_ack_and_a_redelivery_sends_nothing() -> None:
    edge = MailEdge.build(MailServer())
    await edge.runner.handle(incoming(registered(), offset=0))
    notice = incoming(order_notice("o-1"), offset=0)
    edge.recorder.clear()

    await edge.runner.handle(notice)
    assert edge.mailed("o-1:order_confirmed") == 1
    assert edge.recorder.log == [("write", "u-1"), ("durable",)], "the sent-mark, made durable; nothing sent"
    assert edge.server.sent[0]["To"] == "ann@example.com"

    await edge.runner.handle(notice)  # the same message again: Kafka's redelivery after a crash before the ack
    assert edge.mailed("o-1:order_confirmed") == 1


async def test_an_undeliverable_notice_is_dead_lettered_without_parking_its_key() -> None:
    edge = MailEdge.build(MailServer(refuse="bounce"))
    await edge.runner.handle(incoming(registered(email="bounce@example.com"), offset=0))
    edge.recorder.clear()

    await edge.runner.handle(incoming(order_notice("o-1"), offset=7))
    (letter,) = edge.recorder.sent
    assert letter.topic == "notifications.events.v1.dlq" and letter.key == b"u-1"
    assert letter.header["dlq_agent"] == "deliver_notices" and "550 no such mailbox" in letter.header["dlq_error"]
    assert letter.header["dlq_source_offset"] == "7"
    assert dict(edge.parked) == {}, "no key parked: the user's next notices are tried as usual"
    assert ("write", "u-1") not in edge.recorder.log, "nothing marked: a replay of the dead letter mails it"

    await edge.runner.handle(incoming(order_notice("o-2", email="ann@elsewhere.example"), offset=8))
    assert edge.mailed("o-2:order_confirmed") == 1


async def test_a_notice_read_before_the_user_s_address_goes_back_to_its_topic_and_is_then_mailed() -> None:
    edge = MailEdge.build(MailServer())
    await edge.runner.handle(incoming(order_notice("o-1"), offset=0))
    assert edge.server.sent == [] and edge.recorder.sent == []

    await edge.runner.handle(incoming(registered(), offset=0))
    (handed_back,) = edge.recorder.sent
    assert handed_back.topic == "notifications.events.v1" and handed_back.key == b"u-1"
    assert handed_back.decoded().value["notification_id"] == "o-1:order_confirmed"
    assert edge.server.sent == [], "mailed when read back, like any notice"

    again = Incoming(
        topic=handed_back.topic,
        partition=incoming(order_notice("o-1")).partition,
        offset=1,
        key=handed_back.key,
        value=handed_back.value,
        headers=handed_back.headers,
    )
    await edge.runner.handle(again)
    assert edge.mailed("o-1:order_confirmed") == 1 and edge.server.sent[0]["To"] == "ann@example.com"
