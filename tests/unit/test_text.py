"""The clean-text rule (streams/domain/text.py): which strings break it, and where in a record the first one is."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pytest

from streams.domain.messages import OrderLine, PaymentDetails, PlaceOrder, RegisterUser
from streams.domain.text import UncleanField, is_clean_text, text_problem, unclean_field

pytestmark = pytest.mark.unit

NOW = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)
ORDER = PlaceOrder(
    order_id="o-1",
    user_id="u-1",
    lines=(OrderLine(sku="a", quantity=1, unit_price_cents=100), OrderLine(sku="b", quantity=2, unit_price_cents=5)),
    payment=PaymentDetails(method="card", token="tok-1"),
    idempotency_key="k-1",
    requested_at=NOW,
    user_version=3,
)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a\x00b", "contains a control character (U+0000) at position 1"),
        ("\tx", "contains a control character (U+0009) at position 0"),
        ("line\n", "contains a control character (U+000A) at position 4"),
        ("\x1f", "contains a control character (U+001F) at position 0"),
        ("del\x7f", "contains a control character (U+007F) at position 3"),
        ("ada\x82@example.com", "contains a control character (U+0082) at position 3"),
        ("\x9f", "contains a control character (U+009F) at position 0"),
        ("x\ud800", "contains an unpaired surrogate (U+D800) at position 1"),
        ("\udfff", "contains an unpaired surrogate (U+DFFF) at position 0"),
    ],
)
def test_control_characters_and_surrogates_are_not_clean_text(text: str, problem: str) -> None:
    assert text_problem(text) == problem
    assert not is_clean_text(text)
    assert unclean_field(text) == UncleanField("", problem)


@pytest.mark.parametrize("text", ["", "ada@example.com", "Zoë Ærø", "日本語", "🙂", "\xa0non-breaking", "tab\\t"])
def test_printable_text_in_any_script_is_clean(text: str) -> None:
    assert text_problem(text) is None and is_clean_text(text)
    assert unclean_field(text) is None


def test_a_clean_record_has_no_unclean_field() -> None:
    assert unclean_field(ORDER) is None
    assert unclean_field(RegisterUser(user_id="u-1", username="ann", email="a@x.io", profile={"city": "Zoë"})) is None
    assert unclean_field({"lines": [{"sku": "a", "quantity": 1}], "note": None, "paid": True, "ratio": 0.5}) is None


def _order(**changes: Any) -> PlaceOrder:
    return replace(ORDER, **changes)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (_order(order_id="o\x00"), "order_id"),
        (_order(user_id="\x85u"), "user_id"),
        (_order(lines=(ORDER.lines[0], OrderLine(sku="b\n", quantity=1, unit_price_cents=1))), "lines[1].sku"),
        (_order(payment=PaymentDetails(method="ca\x82rd", token="t")), "payment.method"),
        (_order(payment=PaymentDetails(method="card", token="\ud800")), "payment.token"),
        (_order(idempotency_key="k\x7f"), "idempotency_key"),
        (RegisterUser(user_id="u", username="a", email="e", profile={"city": "x\x1b"}), "profile.city"),
        (RegisterUser(user_id="u", username="a", email="e", profile={"home town": "\x9b"}), "profile['home town']"),
        (RegisterUser(user_id="u", username="a", email="e", profile={"ci\x82ty": "x"}), "profile key 'ci\\x82ty'"),
        ({"lines": [{"sku": "ok"}, {"sku": "\x01"}]}, "lines[1].sku"),
        ({"payment": {"method": "card", "token": "t\ud83d"}}, "payment.token"),
        ({"\x02": 1}, "key '\\x02'"),
        ({"profile": {"a": "ok", "b\tc": "x"}}, "profile key 'b\\tc'"),
    ],
)
def test_the_first_unclean_string_is_named_by_its_path(record: object, field: str) -> None:
    found = unclean_field(record)
    assert found is not None
    assert found.field == field
    assert found.problem.startswith("contains ")
    assert str(found) == f"{field} {found.problem}"
    assert is_clean_text(str(found)), "the path shows an unclean key escaped, never raw"


def test_the_first_of_several_unclean_strings_in_field_order_is_named() -> None:
    found = unclean_field(_order(user_id="u\x00", idempotency_key="k\x00"))
    assert found == UncleanField("user_id", "contains a control character (U+0000) at position 1")


def test_subclasses_of_str_and_of_the_containers_are_walked_too() -> None:
    class Channel(StrEnum):
        BAD = "a\x80"

    @dataclass(frozen=True)
    class Single:
        only: Any

    assert unclean_field(Single(only=Channel.BAD)) == UncleanField("only", text_problem("a\x80") or "")
    assert unclean_field(Single(only=[("ok", "\x03")])) == UncleanField(
        "only[0][1]", "contains a control character (U+0003) at position 0"
    )
    assert unclean_field(Single(only=42)) is None
