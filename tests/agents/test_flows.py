"""Each service's agents subscribe to exactly the topics schemas/flows.py says it receives (the AsyncAPI document
is made from that declaration)."""

from __future__ import annotations

import pytest

from schemas.flows import PARTIES
from schemas.topics import NOTIFICATION_EVENTS, SERVICES, USER_EVENTS, VIEWS_STOCK_LINES
from tests.agents.harness import FaustServiceFactory

pytestmark = pytest.mark.agents

MAIL_ONLY = {"notifications": {NOTIFICATION_EVENTS.name, USER_EVENTS.name}}
"""Topics read only by an agent wired when PIPELINE_SMTP_HOST is set (not here)."""


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_subscribes_to_the_topics_it_is_declared_to_receive(
    faust_service: FaustServiceFactory, service: str
) -> None:
    built = faust_service(service).built
    subscribed = {s for r in built.runners.values() for s in r.sources}
    subscribed |= {s for v in built.views for s in v.sources}
    subscribed.discard(VIEWS_STOCK_LINES.name)  # internal to the view service, not in the public document
    (party,) = [p for p in PARTIES if p.name == service]
    declared = {spec.name for spec in party.receives}
    assert declared - subscribed == MAIL_ONLY.get(service, set())
    assert subscribed <= declared
