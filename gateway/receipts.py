"""Receipts: the commands this gateway accepted, by command id, so their sender can ask what became of them.

Redis key ``gateway:command:<command_id>`` holds a JSON :class:`Receipt` for 24 h: which command, sent by whom,
on which user or order. The command id is the command's ``ce_id``. :meth:`gateway.service.Gateway.submit` writes
the receipt **before** it publishes the command and removes it again when the publish fails, so every command
the gateway may have put on a topic has a receipt (and a 202 always names one), and a command can never be
decided before its receipt exists.

The receipt says only that the command was accepted. What became of it is the view service's: the command-status
view (:mod:`streams.views.commands`) for a user command, the order view for a PlaceOrder;
:mod:`gateway.handlers.commands` puts the two together.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from gateway.responses import Reply

if TYPE_CHECKING:
    import redis.asyncio as aioredis

KEY_PREFIX = "gateway:command:"
TTL_S = 24 * 60 * 60
"""As long as the command-status view keeps an outcome (:data:`streams.views.commands.COMMAND_TTL_MS`)."""


@dataclass(frozen=True)
class Receipt:
    """One accepted command."""

    command_id: str
    command: str
    """The command's record name (``ChangeEmail``)."""
    subject: str
    """Who sent it (the token's subject): the only caller who may read its status."""
    accepted_at: int
    """When the gateway accepted it (epoch ms)."""
    user_id: str
    """The user the command is about (for PlaceOrder, the customer)."""
    order_id: str | None = None
    """The order a PlaceOrder places."""

    @property
    def resource(self) -> str:
        """The URL of what the command changes."""
        return f"/api/orders/{self.order_id}" if self.order_id else f"/api/users/{self.user_id}"

    @property
    def location(self) -> str:
        """The URL of the command's status."""
        return f"/api/commands/{self.command_id}"

    def accepted(self, **fields: Any) -> Reply:
        """The 202 for this command: ``fields`` with its id and status, ``Location`` the status's URL."""
        return Reply(202, {**fields, "command_id": self.command_id, "status": "accepted"}, {"Location": self.location})


class ReceiptStore:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int = TTL_S) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    @staticmethod
    def redis_key(command_id: str) -> str:
        return f"{KEY_PREFIX}{command_id}"

    async def put(self, receipt: Receipt) -> None:
        await self._redis.set(self.redis_key(receipt.command_id), json.dumps(asdict(receipt)), ex=self._ttl_s)

    async def get(self, command_id: str) -> Receipt | None:
        raw: Any = await self._redis.get(self.redis_key(command_id))
        if raw is None:
            return None
        return Receipt(**json.loads(raw))

    async def drop(self, command_id: str) -> None:
        await self._redis.delete(self.redis_key(command_id))
