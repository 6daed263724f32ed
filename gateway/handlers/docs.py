"""Interactive API docs: Swagger UI over ``/openapi.json``, served by the gateway itself (no CDN, works offline).

Swagger UI's files come from the ``swagger-ui-bundle-v2`` package (Swagger UI 5, which reads OpenAPI 3.1; the
older ``swagger-ui-bundle`` ships 4.x, which refuses 3.1 documents). ``/docs`` is the page; ``/docs/{asset}``
serves only the names in :data:`ASSETS`, so no other file of the package (nor anything a path could reach) is
served. The page loads nothing inline and nothing from another origin, which lets it carry a strict
Content-Security-Policy (:data:`CSP`): scripts, styles and requests from this origin only, images also as
``data:`` URIs (Swagger UI's stylesheet draws its icons with them).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

BUNDLE = Path(str(swagger_ui_path))
"""Swagger UI's distribution folder inside the installed package."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The docs page's Content-Security-Policy: everything from this origin, nothing inline, never framed."""

INIT_JS = """\
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""
"""Starts Swagger UI on the gateway's document (the package's own initializer points at a public demo API)."""

ASSETS: dict[str, tuple[str, Path | None]] = {
    "swagger-ui.css": ("text/css; charset=utf-8", BUNDLE / "swagger-ui.css"),
    "swagger-ui-bundle.js": ("text/javascript; charset=utf-8", BUNDLE / "swagger-ui-bundle.js"),
    "favicon-32x32.png": ("image/png", BUNDLE / "favicon-32x32.png"),
    "init.js": ("text/javascript; charset=utf-8", None),  # INIT_JS
}
"""What ``/docs/{asset}`` serves: name → (content type, file in the bundle, or None for :data:`INIT_JS`)."""

PAGE = """\
<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>order-pipeline gateway: API docs</title>
    <link rel="stylesheet" href="/docs/swagger-ui.css">
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/swagger-ui-bundle.js"></script>
    <script src="/docs/init.js"></script>
  </body>
</html>
"""

_REVALIDATE = {"Cache-Control": "no-cache"}
"""Cached, but checked on every use (ETag / Last-Modified), so an upgraded package is seen at once."""


async def page(request: web.Request) -> web.StreamResponse:
    return web.Response(text=PAGE, content_type="text/html", headers={**_REVALIDATE, "Content-Security-Policy": CSP})


async def asset(request: web.Request) -> web.StreamResponse:
    entry = ASSETS.get(request.match_info["asset"])
    if entry is None:
        raise web.HTTPNotFound()
    content_type, path = entry
    if path is None:
        return web.Response(text=INIT_JS, content_type="text/javascript", headers=_REVALIDATE)
    return web.FileResponse(path, headers={**_REVALIDATE, "Content-Type": content_type})
