"""The composition root of a worker: builds one service's app, tables, agents, outbox, endpoint and watchdog.

``pipeline worker SERVICE`` calls :func:`create_app` and runs the app it returns. Everything is built here and
handed down; nothing imports this module back, and nothing connects until the app starts.
"""

from __future__ import annotations

from common.encoding import registry_codec
from common.settings import Settings
from schemas.catalog import SchemaCatalog
from streams.agents import ServiceApp
from streams.app import app_id, faust_sender, new_faust_app
from streams.endpoint import add_http_endpoint
from streams.outbox import Outbox
from streams.services import wire
from streams.watchdog import Watchdog, stop_stalled_process


def create_app(service: str, settings: Settings) -> ServiceApp:
    """Build the Faust app of ``service`` with its tables and agents (nothing connects until it starts)."""
    catalog = SchemaCatalog.load()
    codec = registry_codec(catalog, settings)
    codec.warm()  # every id known before the first record: no registry call from inside an agent
    app = new_faust_app(service, settings)
    outbox = Outbox(codec, catalog, faust_sender(app), source=f"/order-pipeline/{service}")
    built = ServiceApp(
        service, app, outbox, write_timeout_s=settings.delivery_timeout_s, batch_max=settings.stream_batch_max
    )
    wire(built, settings, codec)
    watchdog = add_watchdog(built, settings)
    add_http_endpoint(built, settings, watchdog)
    return built


def add_watchdog(built: ServiceApp, settings: Settings) -> Watchdog:
    """Stop this worker when it holds partitions with waiting messages and makes no progress (see watchdog)."""
    app = built.app
    agents = [*built.runners.values(), *built.views]
    sources = {name for agent in agents for name in agent.sources}
    watchdog = Watchdog(
        settings,
        app_id(built.name),
        sources=sources,
        busy_for=lambda: max((agent.busy_for() for agent in agents), default=0.0),
        ready=lambda: bool(app.tables.recovery.completed.is_set()),  # type: ignore[attr-defined]
    )

    @app.timer(interval=settings.watchdog_interval_s)  # type: ignore[untyped-decorator]
    async def watch_progress() -> None:
        if await watchdog.check():
            stop_stalled_process()

    return watchdog
