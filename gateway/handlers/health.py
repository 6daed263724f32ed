"""The public routes: health (every check), readiness (the critical ones), liveness, the OpenAPI document and
the Prometheus metrics. None needs a token and none is rate limited (:data:`gateway.middleware.PUBLIC_PATHS`).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.health import health_report
from gateway.responses import json_response
from gateway.service import GATEWAY


async def health(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    report = await health_report(gateway.checks, gateway.uptime_s)
    return json_response(report, status=200 if report["status"] == "healthy" else 503)


async def ready(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    report = await health_report((c for c in gateway.checks if c.critical), gateway.uptime_s)
    return json_response(report, status=200 if report["status"] == "healthy" else 503)


async def live(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "alive", "uptime_s": round(request.app[GATEWAY].uptime_s, 3)})


async def openapi(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[GATEWAY].document)


async def metrics(request: web.Request) -> web.StreamResponse:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
