"""The service list the edge wires: handled records exist, keys match the topics, states store as JSON."""

from __future__ import annotations

import json

import pytest

from schemas.topics import topic_for_record
from streams.domain import saga
from streams.domain.messages import MESSAGE_TYPES
from streams.domain.saga import SERVICES, USER_SERVICES

pytestmark = pytest.mark.unit

KEY_FIELDS = {"user id": "user_id", "order id": "order_id", "sku": "sku", "e-mail": "email"}
EVERY_SERVICE = SERVICES + USER_SERVICES


@pytest.mark.parametrize("service", EVERY_SERVICE, ids=lambda s: s.name)
def test_a_service_consumes_records_keyed_like_its_state(service: saga.Service) -> None:  # type: ignore[type-arg]
    assert service.handles <= set(MESSAGE_TYPES)
    for record in service.handles:
        assert topic_for_record(record).key_field == KEY_FIELDS[service.key], record
        assert MESSAGE_TYPES[record].KEY_FIELD == KEY_FIELDS[service.key]


@pytest.mark.parametrize("service", EVERY_SERVICE, ids=lambda s: s.name)
def test_an_empty_state_survives_json(service: saga.Service) -> None:  # type: ignore[type-arg]
    field = KEY_FIELDS[service.key]
    kwargs = {field: "k-1"} if service.state_type.__name__ != "OrderReservation" else {field: "k-1", "lines": ()}
    state = service.state_type(**kwargs)
    assert service.load(json.loads(json.dumps(state.to_json()))) == state


def test_names_and_tables_are_unique() -> None:
    assert len({s.name for s in EVERY_SERVICE}) == len({s.table for s in EVERY_SERVICE}) == len(EVERY_SERVICE)


def test_every_record_is_consumed_or_is_an_outcome() -> None:
    consumed = set().union(*(s.handles for s in EVERY_SERVICE))
    outcomes = {"OrderRejected", "OrderCompensationFailed", "NotificationSent", "StockAdded", "PaymentPending"}
    user_outcomes = {
        "UserProfileUpdated",
        "UserLoggedIn",
        "UserOnboardingStarted",
        "UserCommandRejected",
        "UserSnapshot",
    }
    produced_inputs = {
        "PlaceOrder",
        "AddStock",
        "OrderDeadlineReached",
        "UserRegistered",
        "UserDeactivated",
        "UserReactivated",
    }
    assert set(MESSAGE_TYPES) == consumed | outcomes | user_outcomes
    assert produced_inputs <= consumed
