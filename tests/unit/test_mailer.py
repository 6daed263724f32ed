"""The mail edge without a server: the message written for a mail, which failures are retried, the breaker, the
outcome the step gets back, and the settings that switch it on and keep it within the watchdog's patience."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest
from pydantic import ValidationError

from common.settings import Settings
from streams.domain.core import Decision, MailOutcome, SendMail, StepContext
from streams.domain.deliveries import Mailbox
from streams.domain.mail import Mail
from streams.domain.messages import NotificationSent
from streams.mailer import MailDelivery, MailRefused, MailServerUnavailable, classified, email_message
from streams.resilience import BreakerState, CircuitBreaker, RetryPolicy

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MAIL = Mail(
    notification_id="o-1:order_confirmed",
    kind="order_confirmed",
    sender="shop@shop.test",
    to="ann@example.com",
    subject="Your order o-1 is confirmed",
    body="Your order o-1 is confirmed.\n",
    message_id="<1234@shop.test>",
    date=T0,
)


class Server:
    """Stands in for aiosmtplib.send: answers each call with the next of ``answers`` (an exception or None)."""

    def __init__(self, *answers: Exception | None) -> None:
        self.answers = list(answers)
        self.sent: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> Any:
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        self.sent.append(message)


def delivery(server: Server, attempts: int = 3) -> MailDelivery:
    return MailDelivery(
        server.send, RetryPolicy(attempts=attempts, base_s=0.001, cap_s=0.002), CircuitBreaker("mail-server", 
        failure_threshold=1, reset_timeout_s=60)
    )  # fmt: skip


def test_the_message_carries_the_mail_s_headers_and_text() -> None:
    message = email_message(MAIL)
    assert (message["From"], message["To"], message["Subject"]) == (MAIL.sender, MAIL.to, MAIL.subject)
    assert message["Message-ID"] == "<1234@shop.test>" and message["X-Pipeline-Notification-Id"] == MAIL.notification_id
    assert message["Date"] == "Sun, 01 Mar 2026 09:00:00 +0000"
    assert message.get_content() == MAIL.body


def test_a_header_with_a_line_break_cannot_be_written() -> None:
    with pytest.raises(ValueError):
        email_message(Mail(**{**MAIL.__dict__, "subject": "x\r\nBcc: everyone@example.com"}))


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (aiosmtplib.SMTPConnectError("refused"), MailServerUnavailable),
        (aiosmtplib.SMTPServerDisconnected("gone"), MailServerUnavailable),
        (TimeoutError(), MailServerUnavailable),
        (ConnectionRefusedError(), MailServerUnavailable),
        (aiosmtplib.SMTPResponseException(421, "try later"), MailServerUnavailable),
        (aiosmtplib.SMTPResponseException(554, "rejected"), MailRefused),
        (aiosmtplib.SMTPAuthenticationError(535, "bad login"), MailRefused),
        (
            aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no such user", "a@b.c")]),
            MailRefused,
        ),
        (
            aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(450, "busy", "a@b.c")]),
            MailServerUnavailable,
        ),
        (aiosmtplib.SMTPNotSupported("STARTTLS"), MailRefused),
    ],
)
def test_failures_are_sorted_into_worth_another_try_or_not(exc: Exception, kind: type[Exception]) -> None:
    assert isinstance(classified(exc), kind)


def test_a_bug_is_not_mistaken_for_the_server_s_failure() -> None:
    bug = KeyError("oops")
    assert classified(bug) is bug


def test_a_transient_failure_is_retried_and_the_mail_sent_once() -> None:
    server = Server(MailServerUnavailable("connection refused"), MailServerUnavailable("timeout"))
    assert asyncio.run(delivery(server).deliver(MAIL)) == MailOutcome(True)
    assert [m["Message-ID"] for m in server.sent] == ["<1234@shop.test>"]


def test_a_refusal_is_not_retried() -> None:
    server = Server(MailRefused("550 no such mailbox"), None)
    outcome = asyncio.run(delivery(server).deliver(MAIL))
    assert not outcome.ok and "550 no such mailbox" in outcome.reason
    assert server.answers == [None], "tried once"


def test_a_mail_that_failed_every_try_opens_the_breaker_and_the_next_is_not_tried() -> None:
    server = Server(*[MailServerUnavailable("down")] * 3)
    mailer = delivery(server)
    first = asyncio.run(mailer.deliver(MAIL))
    assert not first.ok and "after 3 tries" in first.reason and "down" in first.reason
    assert mailer.breaker.state is BreakerState.OPEN
    second = asyncio.run(mailer.deliver(MAIL))
    assert not second.ok and "circuit open" in second.reason and server.sent == []


def test_run_effects_marks_a_sent_mail_and_refuses_an_undeliverable_one() -> None:
    notice = NotificationSent(
        notification_id=MAIL.notification_id, user_id="u-1", order_id="o-1", kind=MAIL.kind,
        message="Your order o-1 is confirmed.", sent_at=T0
    )  # fmt: skip
    mailbox = Mailbox(user_id="u-1", address="ann@example.com", version=1)
    decision = Decision(mailbox, effects=(SendMail(mail=MAIL),))
    ctx = StepContext(now=T0)

    sent = asyncio.run(delivery(Server()).run_effects(decision, ctx, notice))
    assert sent.refusal is None and sent.state.was_sent(MAIL.notification_id)  # type: ignore[union-attr]

    refused = asyncio.run(delivery(Server(MailRefused("550 nope"))).run_effects(decision, ctx, notice))
    assert refused.refusal is not None and "550 nope" in refused.refusal and refused.state == mailbox


def test_mail_is_off_unless_a_host_is_set_and_one_mail_s_tries_fit_in_the_watchdog_s_patience() -> None:
    assert Settings.model_fields["smtp_host"].default is None
    fits = Settings(smtp_host="mail.test", smtp_attempts=3, smtp_timeout_s=5, smtp_retry_base_s=0.5)
    assert fits.smtp_worst_case_s == 3 * 5 + 2 * 2.0 < fits.stall_timeout_s
    with pytest.raises(ValidationError, match="stall_timeout_s"):
        Settings(smtp_host="mail.test", smtp_attempts=4, smtp_timeout_s=10)
    with pytest.raises(ValidationError, match="not an e-mail address"):
        Settings(smtp_host="mail.test", smtp_from="shop")
    assert Settings(smtp_host=None, smtp_attempts=10, smtp_timeout_s=10).smtp_host is None, "off: nothing to check"
