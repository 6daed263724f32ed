"""``/api/commands/{command_id}``: what became of a command this gateway accepted: accepted, applied or refused.

Every 202 names its command's id and points ``Location`` here. The receipt (:mod:`gateway.receipts`) says the
command was accepted and by whom: only that caller may read it (anyone else gets the 404 an unknown id gets).
The outcome comes from the views: a user command's from the command-status view, which the event that decided
it writes under the command's id (:mod:`streams.views.commands`); a PlaceOrder's from its order view, where
admission shows as OrderPlaced or OrderRejected (:func:`streams.views.commands.order_outcome`). No outcome yet
means ``accepted``; ``stale`` is true while ``pipeline views rebuild`` runs, when an outcome may be missing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.errors import ApiError
from gateway.receipts import Receipt
from gateway.responses import json_response
from gateway.service import GATEWAY, principal_of
from streams.views import read as views
from streams.views.commands import ACCEPTED, order_outcome

OUTCOME_FIELDS = ("event", "event_id", "decided_at", "version", "reason", "expected_version", "actual_version")
"""What an outcome adds to the answer (each null when the outcome has none)."""


async def get_command(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    command_id = request.match_info["command_id"]
    receipt = await gateway.receipts.get(command_id)
    if receipt is None or receipt.subject != principal_of(request).subject:
        raise ApiError(404, f"Command {command_id} not found")
    outcome, rebuilding = await asyncio.gather(_outcome(request, receipt), views.rebuilding_async(gateway.redis))
    return json_response(command_status(receipt, outcome, stale=rebuilding))


async def _outcome(request: web.Request, receipt: Receipt) -> dict[str, Any] | None:
    redis = request.app[GATEWAY].redis
    if receipt.order_id is not None:
        return order_outcome(await views.get_order_async(redis, receipt.order_id))
    return await views.get_command_outcome_async(redis, receipt.command_id)


def command_status(receipt: Receipt, outcome: dict[str, Any] | None, *, stale: bool) -> dict[str, Any]:
    """The answer: the receipt, with the outcome's status and details once there is one."""
    found = outcome or {}
    return {
        "command_id": receipt.command_id,
        "command": receipt.command,
        "status": found.get("status") or ACCEPTED,
        "accepted_at": receipt.accepted_at,
        "resource": receipt.resource,
        "user_id": receipt.user_id,
        "order_id": receipt.order_id,
        **{name: found.get(name) for name in OUTCOME_FIELDS},
        "stale": stale,
    }
