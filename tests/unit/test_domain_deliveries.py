"""E-mail of notices, the pure parts: what mail a notice becomes, and when a notice is mailed, waits, or is not."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from streams.domain.core import MailOutcome, SendMail, StepContext
from streams.domain.deliveries import Mailbox, SentMark, decide, on_mail_result
from streams.domain.mail import Mail, MailConfig, compose, message_id
from streams.domain.messages import NotificationSent, UserEmailChanged, UserRegistered

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CONFIG = MailConfig(sender="shop@shop.test", max_age=timedelta(hours=1), max_waiting=2, remembered=3)


def at(seconds: float) -> StepContext:
    return StepContext(now=T0 + timedelta(seconds=seconds), mail=CONFIG)


def order_notice(order_id: str = "o-1", *, sent: float = 0, email: str | None = None) -> NotificationSent:
    return NotificationSent(
        notification_id=f"{order_id}:order_confirmed",
        user_id="u-1",
        order_id=order_id,
        kind="order_confirmed",
        message=f"Your order {order_id} is confirmed.",
        sent_at=T0 + timedelta(seconds=sent),
        email=email,
    )


WELCOME = NotificationSent(
    notification_id="u-1:welcome",
    user_id="u-1",
    kind="welcome",
    message="Welcome, ann! Your account is ready.",
    sent_at=T0,
    email="ann@example.com",
)
REGISTERED = UserRegistered(
    user_id="u-1", version=1, username="ann", email="ann@example.com", profile={}, registered_at=T0
)
MOVED = UserEmailChanged(
    user_id="u-1", version=3, old_email="ann@example.com", new_email="ann@new.example", changed_at=T0
)


def mails(decision: object) -> list[Mail]:
    return [effect.mail for effect in decision.effects if isinstance(effect, SendMail)]  # type: ignore[attr-defined]


# --- what a notice becomes ---------------------------------------------------------------------------------


def test_an_order_notice_becomes_a_mail_about_the_order_with_a_message_id_fixed_by_its_id() -> None:
    mail = compose(order_notice(), "ann@example.com", CONFIG)
    assert (mail.sender, mail.to, mail.subject) == ("shop@shop.test", "ann@example.com", "Your order o-1 is confirmed")
    assert mail.body.startswith("Your order o-1 is confirmed.\n")
    assert "Order: o-1" in mail.body and "Account: u-1" in mail.body and "o-1:order_confirmed" in mail.body
    assert mail.message_id == message_id("o-1:order_confirmed", "shop.test")
    assert mail.date == T0
    again = compose(replace(order_notice(), message="the same notice, read again"), "ann@example.com", CONFIG)
    assert again.message_id == mail.message_id and again.date == mail.date, "one notice, one Message-ID and Date"


def test_message_ids_are_valid_headers_distinct_per_notice_and_under_the_sender_s_domain() -> None:
    first, second = message_id("u-1:email_changed:3", "shop.test"), message_id("u-1:email_changed:4", "shop.test")
    assert first != second
    for value in (first, second):
        assert value.startswith("<") and value.endswith("@shop.test>") and ":" not in value


@pytest.mark.parametrize(
    ("kind", "order_id", "subject"),
    [
        ("welcome", None, "Welcome to the order pipeline"),
        ("email_changed", None, "Please confirm your new e-mail address"),
        ("order_cancelled", "o-9", "Your order o-9 was cancelled"),
        ("something_new", "o-9", "About your order o-9"),
        ("something_new", None, "A notice about your account"),
    ],
)
def test_subjects_by_kind(kind: str, order_id: str | None, subject: str) -> None:
    notice = replace(order_notice(), kind=kind, order_id=order_id)
    assert compose(notice, "a@b.c", CONFIG).subject == subject


def test_mail_config_rejects_a_sender_that_is_not_an_address() -> None:
    with pytest.raises(ValueError, match="sender"):
        MailConfig(sender="nobody")
    assert MailConfig(sender="Shop <shop@shop.test>").domain == "shop.test"


# --- when a notice is mailed -------------------------------------------------------------------------------


def test_a_notice_naming_its_address_is_mailed_there_before_any_user_event() -> None:
    decision = decide(None, WELCOME, at(1))
    (mail,) = mails(decision)
    assert mail.to == "ann@example.com" and mail.notification_id == "u-1:welcome"
    assert decision.events == () and decision.refusal is None


def test_an_order_notice_goes_to_the_user_s_newest_address() -> None:
    state = decide(None, REGISTERED, at(0)).state
    assert mails(decide(state, order_notice(), at(1)))[0].to == "ann@example.com"
    state = decide(state, MOVED, at(2)).state
    assert mails(decide(state, order_notice(), at(3)))[0].to == "ann@new.example"
    older = replace(REGISTERED, version=2, email="stale@example.com")
    assert decide(state, older, at(4)).state == state, "an older user event changes nothing"


def test_a_sent_notice_is_marked_and_its_copies_send_nothing() -> None:
    first = decide(None, WELCOME, at(1))
    (mail,) = mails(first)
    marked = on_mail_result(first.state, mail, MailOutcome(True), at(2))  # type: ignore[arg-type]
    assert marked.state is not None and marked.state.was_sent("u-1:welcome")
    assert marked.events == () and marked.refusal is None
    copy = decide(marked.state, replace(WELCOME, message="a producer's replay"), at(30))
    assert copy.effects == () and copy.events == () and copy.state == marked.state


def test_an_undeliverable_notice_is_refused_with_the_reason_and_not_marked() -> None:
    first = decide(None, WELCOME, at(1))
    (mail,) = mails(first)
    refused = on_mail_result(first.state, mail, MailOutcome(False, "550 no such mailbox"), at(2))  # type: ignore[arg-type]
    assert refused.refusal is not None and "550 no such mailbox" in refused.refusal
    assert refused.state == first.state, "nothing kept: a replay of the dead letter mails it"
    assert mails(decide(refused.state, WELCOME, at(3))), "the replay is mailed"


def test_a_notice_older_than_max_age_is_not_mailed() -> None:
    state = decide(None, REGISTERED, at(0)).state
    late = at(CONFIG.max_age.total_seconds() + 1)
    assert decide(state, order_notice(sent=0), late).effects == ()
    assert mails(decide(state, order_notice(sent=2), late)), "one just within max_age still is"


def test_sent_marks_are_forgotten_past_max_age_and_kept_to_the_newest() -> None:
    state = Mailbox(user_id="u-1", address="ann@example.com", version=1)
    for n in range(5):
        notice = order_notice(f"o-{n}", sent=n * 60)
        (mail,) = mails(decide(state, notice, at(n * 60)))
        state = on_mail_result(state, mail, MailOutcome(True), at(n * 60)).state  # type: ignore[assignment]
    assert [m.notification_id for m in state.sent] == ["o-2:order_confirmed", "o-3:order_confirmed",
                                                       "o-4:order_confirmed"]  # fmt: skip
    old = Mailbox(user_id="u-1", sent=(SentMark(notification_id="old", sent_at=T0),))
    (mail,) = mails(decide(old, replace(WELCOME, sent_at=at(7200).now), at(7200)))
    assert [m.notification_id for m in on_mail_result(old, mail, MailOutcome(True), at(7200)).state.sent] == [  # type: ignore[union-attr]
        "u-1:welcome"
    ]


def test_a_notice_without_an_address_waits_and_is_handed_back_once_one_is_known() -> None:
    waiting = decide(None, order_notice("o-1"), at(1))
    assert waiting.effects == () and waiting.state is not None and waiting.state.waiting == (order_notice("o-1"),)
    assert decide(waiting.state, order_notice("o-1"), at(2)).state == waiting.state, "a copy waits once"

    released = decide(waiting.state, REGISTERED, at(3))
    assert released.events == (order_notice("o-1"),), "handed back to its topic unchanged"
    assert released.state is not None and released.state.waiting == () and released.state.address == "ann@example.com"
    again = decide(released.state, REGISTERED, at(4))
    assert again.events == released.events and again.state == released.state, "a redelivery hands back the same"
    assert mails(decide(released.state, order_notice("o-1"), at(5)))[0].to == "ann@example.com"
    assert decide(released.state, MOVED, at(6)).events == (), "a later address hands back nothing new"


def test_too_many_notices_waiting_for_an_address_are_refused() -> None:
    state = None
    for n in range(CONFIG.max_waiting):
        state = decide(state, order_notice(f"o-{n}"), at(n)).state
    refused = decide(state, order_notice("o-x"), at(9))
    assert refused.refusal is not None and "no e-mail address known for user u-1" in refused.refusal
    assert refused.state == state
