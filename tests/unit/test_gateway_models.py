"""The gateway's request models (strict, no unknown fields) and its OpenAPI document (in step with the routes)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.app import ROUTES, create_app
from gateway.models import PlaceOrderRequest, RegisterUserRequest, UpdateProfileRequest
from gateway.openapi import OPERATIONS, build_document
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from tests.gateway_support import DictRedis, MemoryPublisher, gateway_settings

pytestmark = pytest.mark.unit

ORDER: dict[str, Any] = {
    "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}],
    "payment": {"method": "card", "token": "tok_ok"},
}


def test_a_valid_order_request_is_accepted() -> None:
    order = PlaceOrderRequest.model_validate(ORDER)
    assert order.lines[0].quantity == 2
    assert order.payment.token == "tok_ok"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda o: o.pop("lines"), "lines"),
        (lambda o: o.update(lines=[]), "lines"),
        (lambda o: o.update(lines="SKU-1"), "lines"),
        (lambda o: o["lines"][0].update(quantity="2"), "lines.0.quantity"),
        (lambda o: o["lines"][0].update(quantity=2.0), "lines.0.quantity"),
        (lambda o: o["lines"][0].update(quantity=True), "lines.0.quantity"),
        (lambda o: o["lines"][0].update(quantity=0), "lines.0.quantity"),
        (lambda o: o["lines"][0].update(quantity=2**31), "lines.0.quantity"),
        (lambda o: o["lines"][0].update(unit_price_cents=-1), "lines.0.unit_price_cents"),
        (lambda o: o["lines"][0].update(sku=""), "lines.0.sku"),
        (lambda o: o["lines"][0].pop("sku"), "lines.0.sku"),
        (lambda o: o["lines"][0].update(colour="red"), "lines.0.colour"),
        (lambda o: o["payment"].pop("token"), "payment.token"),
        (lambda o: o.update(payment=None), "payment"),
        (lambda o: o.update(user_id="someone-else"), "user_id"),
    ],
)
def test_bad_order_requests_name_the_field(change: Any, field: str) -> None:
    body = {"lines": [dict(line) for line in ORDER["lines"]], "payment": dict(ORDER["payment"])}
    change(body)
    with pytest.raises(ValidationError) as caught:
        PlaceOrderRequest.model_validate(body)
    assert field in {".".join(str(p) for p in err["loc"]) for err in caught.value.errors()}


def test_user_requests() -> None:
    user = RegisterUserRequest.model_validate({"username": "ada", "email": "ada@example.com"})
    assert user.profile == {}
    for bad in (
        {"username": "ada", "email": "not-an-address"},
        {"username": "", "email": "ada@example.com"},
        {"username": "a d a", "email": "ada@example.com"},
        {"username": "ada", "email": "ada@example.com", "profile": {"age": 36}},
        {"username": "ada", "email": "ada@example.com", "admin": True},
        {"email": "ada@example.com"},
    ):
        with pytest.raises(ValidationError):
            RegisterUserRequest.model_validate(bad)
    assert UpdateProfileRequest.model_validate({"profile": {"city": "London"}}).profile == {"city": "London"}
    with pytest.raises(ValidationError):
        UpdateProfileRequest.model_validate({"profile": {}})


def test_a_valid_request_always_encodes_as_its_command() -> None:
    """The models' bounds sit inside the Avro types: the largest valid values still encode."""
    codec = AvroCodec(SchemaCatalog.load())
    big = PlaceOrderRequest.model_validate(
        {
            "lines": [{"sku": "S" * 64, "quantity": 10_000, "unit_price_cents": 100_000_000}] * 100,
            "payment": {"method": "m" * 64, "token": "t" * 256},
        }
    )
    value = {
        "order_id": "o-1",
        "user_id": "u-1",
        "lines": [line.model_dump() for line in big.lines],
        "payment": big.payment.model_dump(),
        "idempotency_key": "k" * 255,
        "requested_at": 1767225600000,
    }
    assert codec.encode("pipeline.orders.PlaceOrder", value)


# --- OpenAPI -------------------------------------------------------------------------------------------------


def registered_routes() -> set[tuple[str, str]]:
    app = create_app(gateway_settings(), MemoryPublisher(), DictRedis(), checks=[])  # type: ignore[arg-type]
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def test_every_registered_route_is_documented_and_every_documented_route_exists() -> None:
    document = build_document()
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert registered_routes() == documented
    assert len(documented) == len(ROUTES) == len(OPERATIONS)


def test_the_document_is_openapi_3_1_with_bearer_security_and_resolvable_refs() -> None:
    document = build_document()
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert document["security"] == [{"bearerAuth": []}]
    public = {path for path, item in document["paths"].items() if item.get("get", {}).get("security") == []}
    assert public == {"/health", "/ready", "/live", "/openapi.json", "/docs", "/docs/{asset}", "/metrics"}

    schemas = document["components"]["schemas"]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    all_refs = refs(document)
    assert all_refs
    for ref in all_refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref


def test_request_bodies_come_from_the_models() -> None:
    document = build_document()
    schemas = document["components"]["schemas"]
    body = document["paths"]["/api/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PlaceOrderRequest"}
    assert schemas["PlaceOrderRequest"]["required"] == ["lines", "payment"]
    assert schemas["PlaceOrderRequest"]["additionalProperties"] is False
    assert schemas["OrderLineRequest"]["properties"]["quantity"]["minimum"] == 1
    patch = document["paths"]["/api/users/{user_id}"]["patch"]
    assert {p["name"] for p in patch["parameters"]} >= {"user_id", "If-Match"}
    assert set(patch["responses"]) >= {"202", "400", "401", "404", "409", "422", "428", "429", "503"}
    assert "Retry-After" in patch["responses"]["429"]["headers"]


def test_every_accepted_command_documents_its_status_location_and_the_status_route_exists() -> None:
    document = build_document()
    accepted = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "202" in operation["responses"]
    ]
    assert len(accepted) == 7, [f"{m} {p}" for p, m, _ in accepted]
    for path, method, operation in accepted:
        headers = operation["responses"]["202"]["headers"]
        assert "/api/commands/{command_id}" in headers["Location"]["description"], (method, path)
    status = document["paths"]["/api/commands/{command_id}"]["get"]
    assert status["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/CommandStatus")
    statuses = document["components"]["schemas"]["CommandStatus"]["properties"]["status"]
    assert statuses["enum"] == ["accepted", "applied", "refused"]
    # a command that needs nothing but its user may be sent without a body; If-Match is optional where it is taken
    for path, versioned in (("reactivate", True), ("logins", False)):
        operation = document["paths"][f"/api/users/{{user_id}}/{path}"]["post"]
        assert operation["requestBody"]["required"] is False
        if_match = [p for p in operation["parameters"] if p["name"] == "If-Match"]
        assert [p["required"] for p in if_match] == ([False] if versioned else [])
    assert document["paths"]["/api/users/{user_id}/email"]["post"]["requestBody"]["required"] is True
    search = {p["name"] for p in document["paths"]["/api/users"]["get"]["parameters"]}
    assert search == {"username_prefix", "registered_after", "registered_before", "profile_key", "profile_value",
                      "active", "limit"}  # fmt: skip
