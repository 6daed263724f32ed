"""The gateway's OpenAPI 3.1 document, built from the request and response models.

:data:`OPERATIONS` documents every route; a unit test holds it equal to the routes the app registers, so the
document cannot drift from the code. Bodies' schemas come from the pydantic models (JSON Schema 2020-12,
which OpenAPI 3.1 uses as is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from common.health import CONTENT_TYPE as HEALTH_CONTENT_TYPE
from gateway.models import (
    MAX_SEARCH_LIMIT,
    ChangeEmailRequest,
    CommandAccepted,
    CommandStatus,
    ConflictResponse,
    Dashboard,
    DeactivateUserRequest,
    EmptyRequest,
    ErrorResponse,
    HealthDocument,
    OrderAccepted,
    OrderView,
    PlaceOrderRequest,
    ProfileUpdateAccepted,
    RegisterUserRequest,
    UpdateProfileRequest,
    UserAccepted,
    UserSearchResult,
    UserStats,
    UserView,
    ValidationErrorResponse,
)

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Media:
    """A model's body under a media type other than ``application/json``."""

    model: type[BaseModel]
    media_type: str


Body = type[BaseModel] | Media | dict[str, Any] | None
"""A response body: a model (as JSON), a model under another media type, a raw JSON schema, or none."""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    responses: dict[int, tuple[str, Body]]
    request: type[BaseModel] | None = None
    request_required: bool = True
    """False: the body may be left out (a command that needs nothing but its path)."""
    public: bool = False
    parameters: tuple[dict[str, Any], ...] = ()
    response_headers: dict[int, dict[str, str]] = field(default_factory=dict)


_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Same key from the same subject within 24 h returns the first response; "
    "a different body under the same key is refused with 422.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
_TRACEPARENT = {
    "name": "traceparent",
    "in": "header",
    "required": False,
    "description": "W3C trace context; continued into the Kafka headers of published commands.",
    "schema": {"type": "string"},
}
_USER_ID = {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}
_ORDER_ID = {"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}}
_MIN_VERSION = {
    "name": "min_version",
    "in": "query",
    "required": False,
    "description": "Wait (bounded) until the view has at least this version; else answer with stale: true.",
    "schema": {"type": "integer", "minimum": 0},
}
_WAIT_FOR = {
    "name": "wait_for",
    "in": "query",
    "required": False,
    "description": "Wait (bounded) until the order has this status (or any terminal one for 'terminal'); "
    "else answer with stale: true.",
    "schema": {
        "type": "string",
        "enum": ["PLACED", "STOCK_RESERVED", "CONFIRMED", "CANCELLED", "REJECTED", "COMPENSATION_FAILED", "terminal"],
    },
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": True,
    "description": "The user version the change is based on (the ETag of GET /api/users/{user_id}).",
    "schema": {"type": "string", "pattern": '^(W/)?"?[0-9]+"?$'},
}
_IF_MATCH_OPTIONAL = {
    **_IF_MATCH,
    "required": False,
    "description": "The user version the command is based on (the ETag of GET /api/users/{user_id}); the user "
    "service refuses the command when the user is at another version (a concurrency conflict, in its status).",
}
_COMMAND_ID = {"name": "command_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_SEARCH = (
    _query("username_prefix", "Usernames starting with this (case-insensitive).", {"type": "string", "maxLength": 64}),
    _query("registered_after", "Registered after this (epoch ms, exclusive).", {"type": "integer", "minimum": 0}),
    _query("registered_before", "Registered before this (epoch ms, exclusive).", {"type": "integer", "minimum": 0}),
    _query("profile_key", "A profile attribute (with profile_value).", {"type": "string", "maxLength": 64}),
    _query(
        "profile_value",
        "The value profile_key must have (whole, case-insensitive; with profile_key).",
        {"type": "string", "maxLength": 1024},
    ),
    _query("active", "Only active (true) or deactivated (false) users.", {"type": "string", "enum": ["true", "false"]}),
    _query(
        "limit",
        f"At most this many users (default 20, at most {MAX_SEARCH_LIMIT}).",
        {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_LIMIT},
    ),
)
_STATUS_LOCATION = {"Location": "the command's status, /api/commands/{command_id}"}

_E = ErrorResponse
_COMMON_AUTH: dict[int, tuple[str, Body]] = {
    401: ("No token provided, or an invalid, expired or wrongly signed token", _E),
    429: ("Too many requests (see Retry-After)", _E),
}
_WRITE: dict[int, tuple[str, Body]] = {
    400: ("Not UTF-8, malformed JSON, nested deeper than 32, not a JSON object, or a bad header", _E),
    413: ("Request body larger than PIPELINE_MAX_BODY_BYTES", _E),
    415: ("The body is not declared JSON (Content-Type: application/json or a +json type, UTF-8)", _E),
    422: (
        "The body does not fit the request model or the command schema (a control character or an unpaired "
        "surrogate in any string included)",
        ValidationErrorResponse,
    ),
    503: ("The broker or Redis (the command's receipt, Idempotency-Key) is unreachable; nothing was published", _E),
}
_IDEMPOTENT_WRITE: dict[int, tuple[str, Body]] = {
    **_WRITE,
    409: ("A request with this Idempotency-Key is still in progress", _E),
}


def _not_json(*media_types: str) -> dict[str, Any]:
    """A body that is not JSON, under each of these media types."""
    return {"content": {media_type: {"schema": {"type": "string"}} for media_type in media_types}}


_HEALTH = Media(HealthDocument, HEALTH_CONTENT_TYPE)
"""The health routes' body: the draft's media type, not plain JSON."""
_READ: dict[int, tuple[str, Body]] = {
    503: ("Redis (the query side) is unreachable", _E),
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/metrics",
        "metrics",
        "Prometheus metrics: requests by route and status, durations",
        "health",
        {200: ("Prometheus text exposition format", {"content": {"text/plain": {"schema": {"type": "string"}}}})},
        public=True,
    ),
    Operation(
        "get",
        "/health",
        "health",
        "Full health: every check (broker, Redis, memory, uptime) with what it observed",
        "health",
        {200: ("pass or warn", _HEALTH), 503: ("fail: a critical check failed", _HEALTH)},
        public=True,
    ),
    Operation(
        "get",
        "/ready",
        "ready",
        "Readiness: the critical checks only (broker, Redis)",
        "health",
        {200: ("Ready (pass or warn)", _HEALTH), 503: ("Not ready (fail)", _HEALTH)},
        public=True,
    ),
    Operation(
        "get",
        "/live",
        "live",
        "Liveness: the process answers (its uptime)",
        "health",
        {200: ("Alive (pass)", _HEALTH)},
        public=True,
    ),
    Operation(
        "get",
        "/openapi.json",
        "openapi",
        "This document",
        "meta",
        {200: ("OpenAPI 3.1 document", {"type": "object"})},
        public=True,
    ),
    Operation(
        "get",
        "/docs",
        "docs",
        "This document, interactive (Swagger UI, served by the gateway: no CDN)",
        "meta",
        {200: ("The page", _not_json("text/html"))},
        public=True,
    ),
    Operation(
        "get",
        "/docs/{asset}",
        "docsAsset",
        "A file of the docs page (Swagger UI's script and stylesheet, its icon, the page's start script)",
        "meta",
        {
            200: ("The file (JavaScript, CSS or PNG)", _not_json("text/javascript", "text/css", "image/png")),
            404: ("Not a file of the docs page", _E),
        },
        public=True,
        parameters=({"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}},),
    ),
    Operation(
        "post",
        "/api/users",
        "registerUser",
        "Register a user (RegisterUser on users.commands.v1)",
        "users",
        {202: ("Accepted: the command is on its topic", UserAccepted), **_IDEMPOTENT_WRITE, **_COMMON_AUTH},
        request=RegisterUserRequest,
        parameters=(_IDEMPOTENCY_KEY, _TRACEPARENT),
        response_headers={202: _STATUS_LOCATION},
    ),
    Operation(
        "get",
        "/api/users",
        "searchUsers",
        "Search users by username prefix, registration time and a profile attribute (public fields only)",
        "users",
        {
            200: ("The matching users, by username", UserSearchResult),
            400: ("A query parameter that is not what it must be", _E),
            **_READ,
            **_COMMON_AUTH,
        },
        parameters=_SEARCH,
    ),
    Operation(
        "get",
        "/api/users/{user_id}",
        "getUser",
        "A user's view (yourself only); ETag is its version",
        "users",
        {
            200: ("The view", UserView),
            400: ("Bad min_version", _E),
            403: ("Not your user", _E),
            404: ("Unknown user", _E),
            **_READ,
            **_COMMON_AUTH,
        },
        parameters=(_USER_ID, _MIN_VERSION),
    ),
    Operation(
        "patch",
        "/api/users/{user_id}",
        "updateUserProfile",
        "Set profile attributes (UpdateUserProfile with expected_version = If-Match)",
        "users",
        {
            202: ("Accepted; poll the given URL to read your write", ProfileUpdateAccepted),
            403: ("Not your user", _E),
            404: ("Unknown user", _E),
            409: ("Version conflict: the user is not at the If-Match version", ConflictResponse),
            428: ("If-Match is required", _E),
            **_WRITE,
            **_COMMON_AUTH,
        },
        request=UpdateProfileRequest,
        parameters=(_USER_ID, _IF_MATCH, _TRACEPARENT),
        response_headers={202: _STATUS_LOCATION},
    ),
    *(
        Operation(
            "post",
            f"/api/users/{{user_id}}/{path}",
            operation_id,
            summary,
            "users",
            {
                202: ("Accepted: the command is on its topic", CommandAccepted),
                403: ("Not your user", _E),
                **_IDEMPOTENT_WRITE,
                **_COMMON_AUTH,
            },
            request=request,
            request_required=request is not EmptyRequest,
            parameters=(_USER_ID, *((_IF_MATCH_OPTIONAL,) if versioned else ()), _IDEMPOTENCY_KEY, _TRACEPARENT),
            response_headers={202: _STATUS_LOCATION},
        )
        for path, operation_id, summary, request, versioned in (
            ("email", "changeEmail", "Change your e-mail address (ChangeEmail)", ChangeEmailRequest, True),
            ("deactivate", "deactivateUser", "Deactivate yourself (DeactivateUser)", DeactivateUserRequest, True),
            (
                "reactivate",
                "reactivateUser",
                "Reactivate yourself (ReactivateUser); no body needed",
                EmptyRequest,
                True,
            ),
            ("logins", "recordLogin", "Record a login now (RecordLogin); no body needed", EmptyRequest, False),
        )
    ),
    Operation(
        "get",
        "/api/users/{user_id}/stats",
        "getUserStats",
        "Your statistics: logins and orders placed",
        "users",
        {
            200: ("The statistics", UserStats),
            403: ("Not your user", _E),
            404: ("Unknown user", _E),
            **_READ,
            **_COMMON_AUTH,
        },
        parameters=(_USER_ID,),
    ),
    Operation(
        "post",
        "/api/orders",
        "placeOrder",
        "Place an order for the caller (PlaceOrder on orders.commands.v1, keyed by the token subject)",
        "orders",
        {202: ("Accepted: the command is on its topic", OrderAccepted), **_IDEMPOTENT_WRITE, **_COMMON_AUTH},
        request=PlaceOrderRequest,
        parameters=(_IDEMPOTENCY_KEY, _TRACEPARENT),
        response_headers={202: _STATUS_LOCATION},
    ),
    Operation(
        "get",
        "/api/orders/{order_id}",
        "getOrder",
        "An order's view with its saga timeline (your orders only)",
        "orders",
        {
            200: ("The view", OrderView),
            400: ("Bad wait_for", _E),
            404: ("No order of yours with this id (another customer's order answers the same)", _E),
            **_READ,
            **_COMMON_AUTH,
        },
        parameters=(_ORDER_ID, _WAIT_FOR),
    ),
    Operation(
        "get",
        "/api/dashboard",
        "dashboard",
        "Your profile, recent orders and notifications in one response",
        "dashboard",
        {200: ("The dashboard", Dashboard), **_READ, **_COMMON_AUTH},
    ),
    Operation(
        "get",
        "/api/commands/{command_id}",
        "getCommand",
        "What became of a command you sent: accepted, applied, or refused with the reason",
        "commands",
        {
            200: ("The command's status", CommandStatus),
            404: ("No command of yours with this id (another caller's answers the same; kept 24 h)", _E),
            **_READ,
            **_COMMON_AUTH,
        },
        parameters=(_COMMAND_ID,),
    ),
)


def build_document(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`OPERATIONS`."""
    models: set[type[BaseModel]] = set()
    for op in OPERATIONS:
        if op.request is not None:
            models.add(op.request)
        models.update(body for _, body in op.responses.values() if isinstance(body, type))
        models.update(body.model for _, body in op.responses.values() if isinstance(body, Media))
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema([(m, "validation") for m in ordered], ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))

    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "responses": {
                str(status): _response(description, body, _headers(op, status))
                for status, (description, body) in sorted(op.responses.items())
            },
        }
        if op.parameters:
            operation["parameters"] = list(op.parameters)
        if op.request is not None:
            operation["requestBody"] = {
                "required": op.request_required,
                "content": {"application/json": {"schema": {"$ref": REF.format(model=op.request.__name__)}}},
            }
        if op.public:
            operation["security"] = []
        paths.setdefault(op.path, {})[op.method] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "order-pipeline gateway",
            "version": version,
            "description": "HTTP front door of the order pipeline: commands go to Kafka command topics "
            "(202 Accepted), reads come from the Redis views. Bearer JWT on every /api route.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}],
    }


def _headers(op: Operation, status: int) -> dict[str, str]:
    headers = dict(op.response_headers.get(status, {}))
    if status == 429:
        headers["Retry-After"] = "seconds until the oldest counted request leaves the window"
    if not op.public and 200 <= status < 300:
        headers["RateLimit-Limit"] = "the budget per window"
        headers["RateLimit-Remaining"] = "requests left in the current window"
    return headers


def _response(description: str, body: Body, headers: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if isinstance(body, type):
        out["content"] = {"application/json": {"schema": {"$ref": REF.format(model=body.__name__)}}}
    elif isinstance(body, Media):
        out["content"] = {body.media_type: {"schema": {"$ref": REF.format(model=body.model.__name__)}}}
    elif body is not None and "content" in body:
        out["content"] = body["content"]  # a media type other than JSON, given whole
    elif body is not None:
        out["content"] = {"application/json": {"schema": body}}
    if headers:
        out["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()}
    return out
