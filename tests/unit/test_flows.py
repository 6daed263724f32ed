"""The declarations of who sends and receives what hold against the topics."""

from __future__ import annotations

import pytest

from schemas.flows import PARTIES, Party, problems, senders_of
from schemas.topics import ORDER_EVENTS, TOPICS

pytestmark = pytest.mark.unit


def test_the_declarations_are_true_to_the_topics() -> None:
    assert problems() == []


def test_every_record_of_every_topic_has_a_sender() -> None:
    assert all(senders_of(r) for t in TOPICS for r in t.records)


def test_party_names_are_unique() -> None:
    assert len({p.name for p in PARTIES}) == len(PARTIES)


def test_sent_topics_groups_records_by_their_topic_in_declaration_order() -> None:
    party = Party("p", "d", sends=("OrderCancelled", "OrderPlaced", "AddStock"))
    assert party.sent_topics() == {
        ORDER_EVENTS.name: ("OrderPlaced", "OrderCancelled"),
        "inventory.commands.v1": ("AddStock",),
    }
