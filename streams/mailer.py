"""The mail server at the edge: a notice's e-mail handed over by SMTP (aiosmtplib), retried, behind a breaker.

What a notice becomes is decided by the pure step (:mod:`streams.domain.deliveries`, :mod:`streams.domain.mail`);
this module only hands the composed :class:`~streams.domain.mail.Mail` to the server and says how that went:

* A failure that may pass (no connection, a timeout, a dropped connection, a 4xx answer) is retried with jittered
  backoff (:func:`streams.resilience.retry`, ``PIPELINE_SMTP_ATTEMPTS``); one the server means (a 5xx answer: no
  such mailbox, a refused login, a header it rejects) is not retried.
* A mail whose every try failed for a transient cause opens the ``mail-server`` circuit breaker: for
  ``PIPELINE_SMTP_BREAKER_RESET_S`` the next notices are not tried at all (then one probe), so a server that is
  down or hangs costs one mail's worth of tries, not that times every notice of a batch, and the worker's
  watchdog never sees the agent stall (the settings check that one mail's tries fit in its patience).
* Either way the answer is a :class:`~streams.domain.core.MailOutcome`: the step marks a sent notice and refuses
  an undeliverable one, which the runner dead-letters (no key parked) while the topic flows on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import aiosmtplib

from common.settings import Settings
from common.telemetry import MAILS
from streams.domain import deliveries
from streams.domain.core import Decision, MailOutcome, SendMail, StepContext
from streams.domain.mail import Mail
from streams.domain.messages import Message
from streams.resilience import CircuitBreaker, CircuitOpen, RetryPolicy, retry

log = logging.getLogger(__name__)

BREAKER_THRESHOLD = 1
"""Mails whose every try failed, in a row, that open the breaker: one (each already failed every try)."""

Send = Callable[[EmailMessage], Awaitable[Any]]


class MailServerUnavailable(Exception):
    """The server could not be reached or did not answer in time, or answered 4xx: worth another try."""


class MailRefused(Exception):
    """The server refused the mail for good (5xx), or the mail could not be written: not worth another try."""


def email_message(mail: Mail) -> EmailMessage:
    """The RFC 5322 message of a mail (a header with a line break in it raises ValueError: a refusal)."""
    message = EmailMessage()
    message["From"] = mail.sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Message-ID"] = mail.message_id
    message["Date"] = format_datetime(mail.date.astimezone(UTC))
    message["X-Pipeline-Notification-Id"] = mail.notification_id
    message.set_content(mail.body)
    return message


def classified(exc: Exception) -> Exception:
    """``exc`` as :class:`MailServerUnavailable` or :class:`MailRefused` (others pass through: a bug)."""
    if isinstance(exc, MailServerUnavailable | MailRefused):
        return exc
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        reason = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        return (MailRefused if all(code >= 500 for code in codes) else MailServerUnavailable)(reason)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return (MailRefused if exc.code >= 500 else MailServerUnavailable)(f"{exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPNotSupported | ValueError):
        return MailRefused(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException | OSError | TimeoutError):
        return MailServerUnavailable(f"{type(exc).__name__}: {exc}")
    return exc


def smtp_sender(settings: Settings) -> Send:
    """Hands one message to ``PIPELINE_SMTP_HOST`` (a connection per mail), bounded by ``smtp_timeout_s`` in all."""
    tls = settings.smtp_tls
    options: dict[str, Any] = {
        "hostname": settings.smtp_host,
        "port": settings.smtp_port,
        "username": settings.smtp_username,
        "password": settings.smtp_password.get_secret_value() or None,
        "use_tls": tls == "tls",
        "start_tls": {"auto": None, "starttls": True, "tls": False, "none": False}[tls],
        "timeout": settings.smtp_timeout_s,
    }

    async def send(message: EmailMessage) -> Any:
        try:
            return await asyncio.wait_for(aiosmtplib.send(message, **options), settings.smtp_timeout_s)
        except Exception as exc:
            raise classified(exc) from exc

    return send


class MailDelivery:
    """Hands mails over with retries and a breaker; never raises for the server's sake."""

    def __init__(self, send: Send, policy: RetryPolicy, breaker: CircuitBreaker) -> None:
        self._send = send
        self.policy = policy
        self.breaker = breaker

    @classmethod
    def from_settings(cls, settings: Settings, send: Send | None = None) -> MailDelivery:
        policy = RetryPolicy(
            attempts=settings.smtp_attempts, base_s=settings.smtp_retry_base_s, cap_s=settings.smtp_retry_cap_s
        )
        breaker = CircuitBreaker(
            "mail-server", failure_threshold=BREAKER_THRESHOLD, reset_timeout_s=settings.smtp_breaker_reset_s
        )
        return cls(send or smtp_sender(settings), policy, breaker)

    async def deliver(self, mail: Mail) -> MailOutcome:
        """Hand ``mail`` over; the outcome, with the reason when the server did not take it."""

        def transient(exc: Exception) -> bool:
            return isinstance(exc, MailServerUnavailable)

        async def attempt() -> None:
            try:
                await self._send(email_message(mail))
            except ValueError as exc:
                raise MailRefused(f"cannot write the mail: {exc}") from exc

        try:
            await self.breaker.call(lambda: retry(attempt, self.policy, transient=transient), is_failure=transient)
        except CircuitOpen:
            outcome = MailOutcome(False, "mail server unavailable (circuit open after a mail failed every try)")
        except MailServerUnavailable as exc:
            outcome = MailOutcome(False, f"mail server unavailable after {self.policy.attempts} tries: {exc}")
        except MailRefused as exc:
            outcome = MailOutcome(False, f"refused: {exc}")
        else:
            MAILS.labels(mail.kind, "sent").inc()
            return MailOutcome(True)
        MAILS.labels(mail.kind, "undeliverable").inc()
        log.error("notice %s to %s not mailed: %s", mail.notification_id, mail.to, outcome.reason)
        return outcome

    async def run_effects(self, decision: Decision[Any], ctx: StepContext, message: Message) -> Decision[Any]:
        """The step's e-mails handed over, each answer folded back through :func:`deliveries.on_mail_result`."""
        state = decision.state
        for effect in decision.effects:
            if not isinstance(effect, SendMail):
                raise TypeError(f"mail delivery cannot run {type(effect).__name__}")
            if not isinstance(state, deliveries.Mailbox):
                raise TypeError(f"a mail effect comes with a mailbox, not {state!r}")
            outcome = await self.deliver(effect.mail)
            folded = deliveries.on_mail_result(state, effect.mail, outcome, replace(ctx, now=datetime.now(UTC)))
            if folded.refusal is not None:
                return folded
            state = folded.state
        return Decision(state, decision.events)
