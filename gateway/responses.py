"""The gateway's JSON answers: compact bodies, and a success answer kept as data.

A :class:`Reply` is data rather than a response object so that an idempotent replay
(:meth:`gateway.service.Gateway.idempotent`) can store it and answer it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        body, status=status, headers=headers, dumps=lambda v: json.dumps(v, separators=(",", ":"), default=str)
    )


@dataclass(frozen=True)
class Reply:
    """A success answer, kept as data so an idempotent replay can return it again."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def response(self, *, replayed: bool = False) -> web.Response:
        headers = {**self.headers, **({"Idempotent-Replayed": "true"} if replayed else {})}
        return json_response(self.body, status=self.status, headers=headers)
