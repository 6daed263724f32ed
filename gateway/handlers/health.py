"""The public routes: health (every check), readiness (the critical ones), liveness, the OpenAPI document and
the Prometheus metrics. None needs a token and none is rate limited (:data:`gateway.middleware.PUBLIC_PATHS`).

The three health routes answer in the words and shape the workers use (:mod:`common.health`).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.health import CONTENT_TYPE, Kind
from gateway.responses import json_response
from gateway.service import GATEWAY


async def _answer(request: web.Request, kind: Kind) -> web.Response:
    status, body = await request.app[GATEWAY].health.answer(kind)
    return web.Response(body=body, status=status, content_type=CONTENT_TYPE)


async def health(request: web.Request) -> web.StreamResponse:
    return await _answer(request, "health")


async def ready(request: web.Request) -> web.StreamResponse:
    return await _answer(request, "ready")


async def live(request: web.Request) -> web.StreamResponse:
    return await _answer(request, "live")


async def openapi(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[GATEWAY].document)


async def metrics(request: web.Request) -> web.StreamResponse:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
