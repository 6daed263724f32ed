"""The interactive API docs (``/docs``): a page and its files from this origin only, under a strict CSP."""

from __future__ import annotations

import pytest

from gateway.handlers.docs import ASSETS, CSP
from tests.gateway_support import Client, Env, page_references

pytestmark = pytest.mark.unit


@pytest.fixture
def env() -> Env:
    return Env()


def test_the_page_loads_only_files_of_its_own_origin_and_each_is_served_with_its_type(env: Env) -> None:
    async def scenario(client: Client) -> None:
        page = await client.get("/docs")  # no token: public
        assert page.status == 200 and page.content_type == "text/html"
        assert page.headers["Content-Security-Policy"] == CSP
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Cache-Control"] == "no-cache"
        found = page_references(await page.text())
        assert found.inline == [], "nothing inline: the CSP would block it"
        assert sorted(found.urls) == sorted(f"/docs/{name}" for name in ASSETS), "every file, each once"
        for url in found.urls:
            assert url.startswith("/") and not url.startswith("//"), f"{url}: same origin, by absolute path"
            answer = await client.get(url)
            body = await answer.read()
            assert answer.status == 200, url
            assert answer.headers["Content-Type"] == ASSETS[url.removeprefix("/docs/")][0], url
            assert answer.headers["X-Content-Type-Options"] == "nosniff", url
            assert len(body) > 100, url
        bundle = await (await client.get("/docs/swagger-ui-bundle.js")).text()
        assert "SwaggerUIBundle" in bundle
        start = await (await client.get("/docs/init.js")).text()
        assert '"/openapi.json"' in start and (await client.get("/openapi.json")).status == 200

    env.run(scenario)


def test_the_csp_allows_this_origin_only_and_nothing_inline() -> None:
    directives = dict(part.strip().split(" ", 1) for part in CSP.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'", name
    assert directives["img-src"] == "'self' data:"
    assert "unsafe" not in CSP and "http" not in CSP


def test_only_the_listed_files_are_served(env: Env) -> None:
    async def scenario(client: Client) -> None:
        for path in (
            "/docs/index.html",  # the package's page points at a public demo API
            "/docs/swagger-initializer.js",
            "/docs/swagger-ui-bundle.js.map",
            "/docs/..%2F..%2Fpyproject.toml",
            "/docs/%2Fetc%2Fpasswd",
            "/docs/",
        ):
            answer = await client.get(path)
            assert answer.status == 404, path
            assert await answer.json() == {"error": "Not found"}, path

    env.run(scenario)


def test_files_are_revalidated_rather_than_fetched_again(env: Env) -> None:
    async def scenario(client: Client) -> None:
        first = await client.get("/docs/swagger-ui.css")
        assert first.status == 200 and first.headers["Cache-Control"] == "no-cache"
        again = await client.get("/docs/swagger-ui.css", headers={"If-None-Match": first.headers["ETag"]})
        assert again.status == 304

    env.run(scenario)
