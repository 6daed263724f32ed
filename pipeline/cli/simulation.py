"""The outside world, simulated: sample customers placing orders, and the payment provider going down."""

from __future__ import annotations

from typing import Any

import click

from common.settings import get_settings
from pipeline.cli.errors import CliError
from pipeline.cli.reach import kafka_at, redis_at, require


@click.command()
@click.option("--orders", type=click.IntRange(min=1), default=200, show_default=True, help="orders to place")
@click.option("--rate", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="orders per second")
@click.option("--customers", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--skus", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--stock", "stock_per_sku", type=click.IntRange(min=0), default=60, show_default=True)
@click.option("--decline-share", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--timeout", "settle_timeout_s", type=float, default=180.0, show_default=True)
def demo(**options: Any) -> None:
    """Place a stream of sample orders through the running workers and summarise the outcome."""
    import redis
    from rich.console import Console

    from producers.demo import DemoPlan, run_demo, summarise
    from producers.toolkit import EventPublisher
    from schemas.catalog import SchemaCatalog

    settings = get_settings()
    require(kafka_at(settings), redis_at(settings.redis_url), redis_at(settings.provider_store))
    console = Console()
    store = redis.Redis.from_url(settings.redis_url)
    with EventPublisher.from_settings(settings, SchemaCatalog.load()) as publisher:
        result = run_demo(publisher, store, DemoPlan(**options), console)
    if not summarise(store, redis.Redis.from_url(settings.provider_store), result, console):
        raise CliError("some orders did not settle or a promise was broken")


@click.group()
def provider() -> None:
    """The simulated payment provider (an external system; its ledger lives in a Redis database of its own)."""


@provider.command("outage")
@click.argument("state", type=click.Choice(["on", "off"]))
def provider_outage(state: str) -> None:
    """Take the provider down (every charge and refund fails, nothing moves) or bring it back."""
    import asyncio

    import redis.asyncio as aioredis

    from streams.payment_provider import set_outage

    settings = get_settings()
    require(redis_at(settings.provider_store))

    async def switch() -> None:
        client = aioredis.Redis.from_url(settings.provider_store)
        try:
            await set_outage(client, state == "on")
        finally:
            await client.aclose()

    try:
        asyncio.run(switch())
    except Exception as exc:
        raise CliError(f"Redis at {redis_at(settings.provider_store).address}: {exc}") from exc
    click.echo(f"payment provider {'down' if state == 'on' else 'up'}")
