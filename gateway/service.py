"""The gateway's dependencies and shared state, and what each request carries from the middlewares to handlers.

:class:`Gateway` (``app[GATEWAY]``) holds the clients and policies :func:`gateway.app.create_app` was given and
the things every write or wait does: submit one command (its receipt, then the command, acknowledged), run a
write once per ``Idempotency-Key``, and read a view until it reaches what the caller waits for (bounded).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel

from common.health import Health
from common.settings import Settings
from gateway.auth import Principal, TokenPolicy
from gateway.clientaddr import Network, client_address, forwarded_chain
from gateway.errors import UNAVAILABLE, ApiError
from gateway.idempotency import IdempotencyStore, InvalidIdempotencyKey, StoredResponse, check_key, fingerprint
from gateway.ratelimit import Decision, RateLimiter
from gateway.receipts import Receipt, ReceiptStore
from gateway.responses import Reply
from gateway.tracing import TraceContext
from producers.toolkit import PublishError, RecordNotAllowed
from schemas.errors import InvalidRecord
from schemas.topics import TopicSpec

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.commands import CommandPublisher

log = logging.getLogger("gateway")

READ_POLL_S = 0.05
"""How often a read that waits (``?min_version``, ``?wait_for``) looks at Redis again."""


@dataclass
class Gateway:
    """The app's dependencies and shared state (``app[GATEWAY]``)."""

    settings: Settings
    publisher: CommandPublisher
    redis: aioredis.Redis
    policy: TokenPolicy
    limiter: RateLimiter
    idempotency: IdempotencyStore
    receipts: ReceiptStore
    health: Health
    """``/health``, ``/ready`` and ``/live`` (:mod:`common.health`)."""
    document: dict[str, Any]
    trusted_proxies: tuple[Network, ...] = ()
    """Peers whose forwarding header names the client (see :mod:`gateway.clientaddr`)."""

    async def submit(
        self,
        request: web.Request,
        topic: TopicSpec,
        record: str,
        value: dict[str, Any],
        *,
        user_id: str,
        order_id: str | None = None,
    ) -> Receipt:
        """Publish one command, keyed by ``user_id``, under a new id with a receipt for it (:mod:`gateway.receipts`).

        The receipt is written first (Redis unreachable: 503, nothing published) and dropped again when the
        publish fails, so a 202 always names a command whose status can be read.
        """
        receipt = Receipt(
            command_id=str(uuid.uuid4()),
            command=record,
            subject=principal_of(request).subject,
            accepted_at=int(time.time() * 1000),
            user_id=user_id,
            order_id=order_id,
        )
        await self.receipts.put(receipt)
        try:  # both command topics are keyed by user id; a saga is correlated by its order, else by its user
            await self.publish(request, topic, record, user_id, value, order_id or user_id, event_id=receipt.command_id)
        except BaseException:
            try:
                await self.receipts.drop(receipt.command_id)
            except Exception as exc:  # noqa: BLE001 - it expires by itself; nobody was given its id
                log.warning("dropping the receipt of unpublished command %s failed: %s", receipt.command_id, exc)
            raise
        return receipt

    async def publish(
        self,
        request: web.Request,
        topic: TopicSpec,
        record: str,
        key: str,
        value: dict[str, Any],
        correlation_id: str,
        *,
        event_id: str | None = None,
    ) -> None:
        """Publish one command and wait for its acknowledgement: 422 if it does not encode, 503 if not acked."""
        try:
            await self.publisher.send(
                topic,
                record,
                key,
                value,
                correlation_id=correlation_id,
                traceparent=trace_of(request).traceparent,
                event_id=event_id,
            )
        except InvalidRecord as exc:
            raise ApiError(422, f"Invalid command: {exc}") from exc
        except RecordNotAllowed:
            raise  # a wiring bug, not the client's or the broker's fault: a 500
        except PublishError as exc:
            log.warning("publishing %s to %s failed: %s", record, topic.name, exc)
            raise ApiError(503, UNAVAILABLE) from exc

    async def idempotent(
        self,
        request: web.Request,
        body: BaseModel,
        act: Callable[[], Awaitable[Reply]],
        *,
        also: dict[str, Any] | None = None,
    ) -> web.Response:
        """Run ``act`` once per ``Idempotency-Key`` (per subject, 24 h); see :mod:`gateway.idempotency`.

        ``also`` holds what else makes the request this request (a header such as ``If-Match``): the same key
        with another value of it is another request, refused like another body."""
        header = request.headers.get("Idempotency-Key")
        if header is None:
            return (await act()).response()
        try:
            key = check_key(header)
        except InvalidIdempotencyKey as exc:
            raise ApiError(400, str(exc)) from exc
        subject = principal_of(request).subject
        payload = body.model_dump(mode="json")
        print_ = fingerprint(request.method, request.path, payload if also is None else {"body": payload, **also})
        try:
            claim = await self.idempotency.claim(subject, key, print_)
        except Exception as exc:  # noqa: BLE001 - no store, no safe retry: refuse rather than risk a duplicate
            log.warning("idempotency store unreachable: %s: %s", type(exc).__name__, exc)
            raise ApiError(503, UNAVAILABLE) from exc
        if claim.outcome == "mismatch":
            raise ApiError(422, "Idempotency-Key was already used with a different request")
        if claim.outcome == "in_progress":
            raise ApiError(409, "A request with this Idempotency-Key is still in progress; retry shortly")
        if claim.outcome == "replay" and claim.response is not None:
            stored = claim.response
            return Reply(stored.status, stored.body, stored.headers).response(replayed=True)
        try:
            reply = await act()
        except BaseException:
            await self._release(subject, key)
            raise
        try:
            await self.idempotency.complete(
                subject, key, print_, StoredResponse(reply.status, reply.body, reply.headers)
            )
        except Exception as exc:  # noqa: BLE001 - the command is published: answer it, a replay may publish again
            log.warning("storing the answer for Idempotency-Key %r failed: %s", key, exc)
        return reply.response()

    async def _release(self, subject: str, key: str) -> None:
        try:
            await self.idempotency.release(subject, key)
        except Exception as exc:  # noqa: BLE001 - the claim expires by itself (short TTL)
            log.warning("releasing Idempotency-Key %r failed: %s", key, exc)

    async def read_until(
        self,
        fetch: Callable[[], Awaitable[dict[str, Any] | None]],
        reached: Callable[[dict[str, Any]], bool] | None,
        final: Callable[[dict[str, Any]], bool] = lambda _: False,
    ) -> tuple[dict[str, Any] | None, bool]:
        """The view, waiting (bounded) until ``reached`` holds; ``(view, stale)``.

        Without ``reached`` the view is read once. ``final`` views end the wait early (they will not change
        towards the target), and are not stale. ``stale`` is true only when the wait ran out.
        """
        if reached is None:
            return await fetch(), False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.read_wait_max_s
        while True:
            view = await fetch()
            if view is not None and (reached(view) or final(view)):
                return view, False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return view, True
            await asyncio.sleep(min(READ_POLL_S, remaining))


GATEWAY = web.AppKey("gateway", Gateway)
PRINCIPAL = web.RequestKey("gateway.principal", Principal)
"""The caller, set by the guard on every route but the public ones."""
TRACE = web.RequestKey("gateway.trace", TraceContext)
"""The request's place in its trace, set by the tracing middleware on every request."""
RATE = web.RequestKey("gateway.rate", Decision)
"""The rate limiter's decision, set by the guard; reported in the ``RateLimit-*`` headers."""
CLIENT = web.RequestKey("gateway.client", str)
"""The client's address, worked out once per request by :func:`client_of`."""


def client_of(request: web.Request) -> str:
    """The client's address: the peer, or what a trusted proxy forwarded (:mod:`gateway.clientaddr`)."""
    if CLIENT in request:
        return request[CLIENT]
    gateway = request.app[GATEWAY]
    chain: list[str] = []
    if gateway.trusted_proxies:
        header = gateway.settings.gateway_forwarded_header
        chain = forwarded_chain(header, request.headers.getall(header, ()))
    client = client_address(request.remote, chain, gateway.trusted_proxies)
    request[CLIENT] = client
    return client


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def trace_of(request: web.Request) -> TraceContext:
    return request[TRACE]
