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


def test_the_provider_keeps_its_ledger_in_a_database_of_its_own() -> None:
    """Flushing the query side's database (the views) must not lose a charge."""
    from common.settings import Settings

    assert Settings(redis_url="redis://127.0.0.1:6379/0").provider_store == "redis://127.0.0.1:6379/1"
    assert Settings(redis_url="redis://h:1/1").provider_store == "redis://h:1/2"
    assert Settings(redis_url="redis://h:1").provider_store == "redis://h:1/1"
    assert Settings(redis_url="redis://h:1/0", provider_redis_url="redis://p:2/0").provider_store == "redis://p:2/0"
