"""The simulated provider's card tokens: what a test or a person can ask of it."""

from __future__ import annotations

import pytest

from streams.payment_provider import token_flags

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("token", "flags"),
    [
        ("tok_ok", {"ok"}),
        ("tok_decline", {"decline"}),
        ("tok_slow", {"slow"}),
        ("tok_refund_fails", {"refund_fails"}),
        ("tok_slow_refund_fails", {"slow", "refund_fails"}),
        ("tok_visa", set()),
    ],
)
def test_tokens_read_as_words(token: str, flags: set[str]) -> None:
    assert token_flags(token) == flags
