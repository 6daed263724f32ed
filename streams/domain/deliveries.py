"""E-mail delivery of notices, keyed by user id: each notice mailed once, to the right address, or dead-lettered.

The notifications service reads ``notifications.events.v1`` (the notices every service records) and
``users.events.v1`` (where each user's address comes from), both keyed by user id, so one user's notices and
address meet on one partition. :func:`decide` is the pure step:

* UserRegistered / UserEmailChanged → the user's address (the newest version wins). Notices that waited for an
  address are handed back to their topic (re-emitted unchanged: the same fact, the same event id), so they are
  mailed like any notice, each with its own outcome; a redelivered user event hands back the same ones again.
* NotificationSent → a :class:`~streams.domain.core.SendMail` effect with the mail :func:`~streams.domain.mail.compose`
  makes, to the notice's own ``email`` if it names one (a welcome, a new address to confirm), else to the user's
  address; or nothing, when the notice is a copy of one already mailed (its sent-mark is kept), or older than
  ``ctx.mail.max_age``; or it waits in the state when no address is known yet (at most ``max_waiting``, then
  it is refused: dead-lettered, replayable).
* :func:`on_mail_result` folds the edge's answer back: taken → a sent-mark (``notification_id`` and the notice's
  time); not taken after the edge's retries → the notice is refused with the reason, so the edge dead-letters it
  on ``notifications.events.v1.dlq`` without parking its key: the user's later notices are mailed as usual, and
  ``pipeline dlq replay`` sends it again once the cause is fixed (it was not marked, so the replay mails it).

Where the sent-mark lives, and why: in this table, written and made durable with the input's offset (the edge's
rule: state durable before the ack), so a redelivery or a replay finds it. The mark is written after the mail
server took the mail, never before: a crash in between replays the notice and mails it again, with the same
Message-ID and Date (:mod:`streams.domain.mail`), which mail stores that key by Message-ID fold into one; marking
before sending would instead lose the mail for good in that window. Marks are forgotten once their notice is too
old to be mailed anyway (``max_age``), and at most ``remembered`` are kept, so a user's entry stays small.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from streams.domain.core import Decision, MailOutcome, SendMail, StepContext
from streams.domain.mail import Mail, compose
from streams.domain.messages import JsonState, Message, NotificationSent, UserEmailChanged, UserRegistered

HANDLES = frozenset({"NotificationSent", "UserRegistered", "UserEmailChanged"})


@dataclass(frozen=True, kw_only=True)
class SentMark:
    """A notice the mail server took: its id, and its time (the mark is dropped once that is ``max_age`` old)."""

    notification_id: str
    sent_at: datetime


@dataclass(frozen=True, kw_only=True)
class Mailbox(JsonState):
    """Where one user's mail goes, what waits for an address, and what was mailed lately."""

    user_id: str
    address: str | None = None
    version: int = 0
    """The version of the user event the address is from (older events change nothing)."""
    waiting: tuple[NotificationSent, ...] = ()
    """Notices read before any address of the user, oldest first."""
    released: tuple[NotificationSent, ...] = ()
    """The notices the user event of ``version`` handed back (re-emitted if that event is redelivered)."""
    sent: tuple[SentMark, ...] = ()
    """Sent-marks, oldest first."""

    def was_sent(self, notification_id: str) -> bool:
        return any(mark.notification_id == notification_id for mark in self.sent)


def decide(state: Mailbox | None, message: Message, ctx: StepContext) -> Decision[Mailbox]:
    """Apply one user event or notice."""
    match message:
        case UserRegistered():
            return on_address(state, message.user_id, message.version, message.email)
        case UserEmailChanged():
            return on_address(state, message.user_id, message.version, message.new_email)
        case NotificationSent():
            return on_notification_sent(state, message, ctx)
    return Decision(state)


def on_address(state: Mailbox | None, user_id: str, version: int, address: str) -> Decision[Mailbox]:
    """Learn the user's address; hand back the notices that waited for one."""
    state = state or Mailbox(user_id=user_id)
    if version < state.version:
        return Decision(state)
    if version == state.version and state.address is not None:
        return Decision(state, state.released)  # a redelivery: the same hand-back again
    released = state.waiting
    return Decision(replace(state, address=address, version=version, waiting=(), released=released), released)


def on_notification_sent(state: Mailbox | None, notice: NotificationSent, ctx: StepContext) -> Decision[Mailbox]:
    """Mail a notice once, unless it is a copy or stale; keep it until an address is known."""
    state = state or Mailbox(user_id=notice.user_id)
    if notice.sent_at < ctx.now - ctx.mail.max_age or state.was_sent(notice.notification_id):
        return Decision(state)
    if any(w.notification_id == notice.notification_id for w in state.waiting):
        return Decision(state)
    to = notice.email or state.address
    if to is None:
        if len(state.waiting) >= ctx.mail.max_waiting:
            return Decision(
                state,
                refusal=f"no e-mail address known for user {notice.user_id}, "
                f"and {len(state.waiting)} notices already wait for one",
            )
        return Decision(replace(state, waiting=(*state.waiting, notice)))
    return Decision(state, effects=(SendMail(mail=compose(notice, to, ctx.mail)),))


def on_mail_result(state: Mailbox, mail: Mail, outcome: MailOutcome, ctx: StepContext) -> Decision[Mailbox]:
    """Mark a mail the server took; refuse (dead-letter, replayable) a notice it did not take."""
    if not outcome.ok:
        return Decision(state, refusal=f"undeliverable to the mail server: {outcome.reason}")
    horizon = ctx.now - ctx.mail.max_age
    kept = [mark for mark in state.sent if mark.sent_at >= horizon and mark.notification_id != mail.notification_id]
    kept.append(SentMark(notification_id=mail.notification_id, sent_at=mail.date))
    return Decision(replace(state, sent=tuple(kept[-ctx.mail.remembered :])))
