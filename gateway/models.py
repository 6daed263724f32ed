"""The gateway's request and response bodies, as pydantic models.

Requests are validated **strictly** (``"2"`` is not a quantity, ``true`` is not a number) and unknown fields
are refused, before anything is encoded or published; the same models give the OpenAPI document its schemas.
Bounds sit inside the Avro types (``quantity`` is an Avro ``int``), so a validated request always encodes.
Every string of a request, profile keys included, must be clean text (:mod:`streams.domain.text`: no control
character, no unpaired surrogate), or the request is a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from streams.domain.text import text_problem

_Strict = ConfigDict(strict=True, extra="forbid", frozen=True)


def clean_text(value: Any) -> Any:
    """A validation error naming the offending character when ``value`` is a string but not clean text.

    Runs before the string check, so an unpaired surrogate is named as such rather than as pydantic's
    "unable to parse raw data as a unicode string"; what is not a string is left to the type check.
    """
    if isinstance(value, str) and (problem := text_problem(value)) is not None:
        raise PydanticCustomError("clean_text", "{problem}", {"problem": problem})
    return value


_Clean = BeforeValidator(clean_text)

ProfileKey = Annotated[str, StringConstraints(min_length=1, max_length=64), _Clean]
ProfileValue = Annotated[str, StringConstraints(max_length=1024), _Clean]
Username = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"), _Clean]
Email = Annotated[str, StringConstraints(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
                  _Clean]  # fmt: skip
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64), _Clean]
Word = Annotated[str, StringConstraints(min_length=1, max_length=64), _Clean]
PaymentToken = Annotated[str, StringConstraints(min_length=1, max_length=256), _Clean]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=256), _Clean]

MAX_PROFILE_ENTRIES = 50
MAX_ORDER_LINES = 100
MAX_SEARCH_LIMIT = 100


# --- requests -----------------------------------------------------------------------------------------------


class RegisterUserRequest(BaseModel):
    """A new user: a login name, an e-mail address and optional free-form profile attributes."""

    model_config = _Strict

    username: Username
    email: Email
    profile: dict[ProfileKey, ProfileValue] = Field(default_factory=dict, max_length=MAX_PROFILE_ENTRIES)


class UpdateProfileRequest(BaseModel):
    """Profile attributes to set (others stay); the expected version travels in ``If-Match``."""

    model_config = _Strict

    profile: dict[ProfileKey, ProfileValue] = Field(min_length=1, max_length=MAX_PROFILE_ENTRIES)


class ChangeEmailRequest(BaseModel):
    """The new e-mail address; the optional ``If-Match`` is the version the change is based on."""

    model_config = _Strict

    email: Email


class DeactivateUserRequest(BaseModel):
    """Why the user is deactivated; the optional ``If-Match`` is the version the deactivation is based on."""

    model_config = _Strict

    reason: Reason


class EmptyRequest(BaseModel):
    """A command that needs nothing but its user: no body, or an empty JSON object."""

    model_config = _Strict


class OrderLineRequest(BaseModel):
    """One ordered SKU."""

    model_config = _Strict

    sku: Sku
    quantity: int = Field(ge=1, le=10_000)
    unit_price_cents: int = Field(ge=0, le=100_000_000)


class PaymentRequest(BaseModel):
    """How the order is paid: a method and the payment provider's opaque token (never card data)."""

    model_config = _Strict

    method: Word
    token: PaymentToken


class PlaceOrderRequest(BaseModel):
    """An order for the caller (the token's subject is the customer)."""

    model_config = _Strict

    lines: list[OrderLineRequest] = Field(min_length=1, max_length=MAX_ORDER_LINES)
    payment: PaymentRequest


# --- responses (documentation; handlers build plain dicts of these shapes) -----------------------------------


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer: a message, sometimes with details."""

    error: str
    details: list[dict[str, Any]] | None = None


class ValidationErrorResponse(ErrorResponse):
    """422: the body does not fit the request model; one detail per problem (``field``, ``message``)."""


class ConflictResponse(BaseModel):
    """409 on PATCH: the user's current version is not the one in ``If-Match``."""

    error: str
    expected: int
    actual: int


class UserAccepted(BaseModel):
    """202: the RegisterUser command is on its topic; ``Location`` answers what became of it."""

    user_id: str
    command_id: str
    status: str = "accepted"


class CommandAccepted(BaseModel):
    """202: the user command is on its topic; ``Location`` (``/api/commands/{command_id}``) answers what became
    of it: applied, or refused with the reason."""

    user_id: str
    command_id: str
    status: str = "accepted"


class ProfileUpdateAccepted(BaseModel):
    """202: the UpdateUserProfile command is on its topic; ``Location`` answers what became of it, and ``poll``
    reads your write once applied."""

    user_id: str
    command_id: str
    status: str = "accepted"
    expected_version: int
    version: int
    poll: str


class OrderAccepted(BaseModel):
    """202: the PlaceOrder command is on its topic; ``Location`` answers whether it was admitted, and the order
    appears at ``/api/orders/{order_id}`` once it was."""

    order_id: str
    command_id: str
    status: str = "accepted"


class CommandStatus(BaseModel):
    """What became of a command this gateway accepted (your own commands only, for 24 h).

    ``accepted``: on its topic, not decided yet as far as the views know; ``applied``: the service did what it
    asked (``event`` says how, ``version`` is the user's version after it); ``refused``: it changed nothing, and
    ``reason`` says why (a concurrency conflict also names ``expected_version`` and ``actual_version``).
    """

    command_id: str
    command: str
    status: Literal["accepted", "applied", "refused"]
    accepted_at: int
    resource: str
    """The URL of what the command changes (the user or the order)."""
    user_id: str
    order_id: str | None = None
    event: str | None = None
    event_id: str | None = None
    decided_at: int | None = None
    version: int | None = None
    reason: str | None = None
    expected_version: int | None = None
    actual_version: int | None = None
    stale: bool
    """True while the views are being rebuilt from the log: an ``accepted`` may be decided already."""


class UserView(BaseModel):
    """The user's view from Redis, plus ``stale`` (true when a requested ``min_version`` was not reached)."""

    model_config = ConfigDict(extra="allow")

    user_id: str
    username: str
    email: str
    profile: dict[str, str]
    active: bool
    version: int
    stale: bool


class OrderView(BaseModel):
    """The order's view from Redis (status, lines, totals, saga timeline), plus ``stale``."""

    model_config = ConfigDict(extra="allow")

    order_id: str
    status: str | None
    user_id: str | None
    timeline: list[dict[str, Any]]
    stale: bool


class UserSummary(BaseModel):
    """What a search shows of a user: no e-mail address, no profile values, no deactivation reason."""

    user_id: str
    username: str
    registered_at: int | None
    active: bool


class UserSearchResult(BaseModel):
    """The users matching every criterion given, by username (at most ``limit``)."""

    users: list[UserSummary]
    count: int
    stale: bool
    """True while the views are being rebuilt from the log."""


class UserStats(BaseModel):
    """A user's activity: logins (counted by RecordLogin) and orders placed."""

    user_id: str
    login_count: int
    last_login_at: int | None
    orders_placed: int


class Dashboard(BaseModel):
    """The caller's profile, recent orders and notifications, read concurrently."""

    user_id: str
    profile: dict[str, Any] | None
    orders: list[dict[str, Any]]
    notifications: list[dict[str, Any]]
    stale: bool
    """True while the views are being rebuilt from the log (``pipeline views rebuild``)."""


HealthStatus = Literal["pass", "warn", "fail"]


class HealthCheck(BaseModel):
    """One reading of one check (draft-inadarei-api-health-check): ``output`` says why it is not ``pass``."""

    componentType: Literal["component", "datastore", "system"] | None = None
    observedValue: Any = None
    observedUnit: str | None = None
    status: HealthStatus
    time: str
    output: str | None = None


class HealthDocument(BaseModel):
    """``application/health+json``: ``pass``/``warn`` answer 200, ``fail`` 503; ``checks`` by
    ``component:measurement``. A check that is not critical warns where a critical one would fail."""

    status: HealthStatus
    serviceId: str
    description: str
    output: str | None = None
    checks: dict[str, list[HealthCheck]]
