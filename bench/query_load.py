"""Stage 5, the query side: the gateway's GET /api/orders/{id} and GET /api/dashboard under load.

A real ``pipeline gateway`` process (its rate limit raised through ``PIPELINE_RATE_LIMIT_REQUESTS``) answers an
aiohttp client holding N connections, closed loop, each connection sending its next request as soon as the
last is answered, for a fixed time (and at most a fixed count). Tokens are signed like ``pipeline token``
(:func:`gateway.auth.issue_token`); each request speaks for the owner of the order it reads.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bench.figures import latency_summary, per_second
from bench.stack import free_port, wait_until
from bench.workers import PIPELINE, Process
from common.settings import Settings
from gateway.auth import issue_token

MAX_REQUESTS = 200_000
"""A hard bound on one endpoint's requests, whatever the duration."""


@contextmanager
def running_gateway(settings: Settings, workdir: Path) -> Iterator[tuple[str, Process]]:
    """``pipeline gateway`` on a free port of 127.0.0.1 with the rate limit out of the way."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        PIPELINE_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        PIPELINE_REDIS_URL=settings.redis_url,
        PIPELINE_RATE_LIMIT_REQUESTS=str(10**9),
        PIPELINE_SERVICE_NAME="gateway",
        PYTHONUNBUFFERED="1",
    )
    process = Process("gateway", [PIPELINE, "gateway", "--host", "127.0.0.1", "--port", str(port)], env,
                      workdir / "gateway.log")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    process.start()
    try:

        def live() -> bool:
            if process.pid is None:
                raise AssertionError(f"the gateway exited:\n{process.log_tail()}")
            with urllib.request.urlopen(f"{base}/live", timeout=2) as answer:
                return int(answer.status) == 200

        wait_until(live, timeout=60, what=f"the gateway at {base}", interval=0.25)
        yield base, process
    finally:
        process.stop()


async def _load(base: str, requests: Sequence[tuple[str, str]], connections: int, duration_s: float) -> dict[str, Any]:
    """Closed loop over ``requests`` ((path, token) pairs, cycled) from ``connections`` concurrent clients."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    cycle = itertools.cycle(requests)
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
        deadline = time.perf_counter() + duration_s

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline and len(latencies) + errors < MAX_REQUESTS:
                path, token = next(cycle)
                sent = time.perf_counter()
                try:
                    async with session.get(path, headers={"Authorization": f"Bearer {token}"}) as answer:
                        await answer.read()
                        statuses[answer.status] = statuses.get(answer.status, 0) + 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    ok = statuses.get(200, 0)
    return {
        "requests": len(latencies),
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(per_second(len(latencies), elapsed), 1),
        "latency_ms": latency_summary(latencies),
    }


def run_query(
    settings: Settings,
    workdir: Path,
    orders_by_user: Mapping[str, Sequence[str]],
    *,
    connections: int,
    duration_s: float,
    profile: bool = False,
) -> dict[str, Any]:
    """Both endpoints, one after the other, against one gateway process (profiled with py-spy if asked)."""
    from bench.figures import summarise_profile
    from bench.saga_load import profiling

    secret = settings.jwt_secret.get_secret_value()
    tokens = {
        user: issue_token(user, secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl_s=3600)
        for user in orders_by_user
    }
    order_requests = [(f"/api/orders/{o}", tokens[u]) for u, orders in orders_by_user.items() for o in orders]
    dashboard_requests = [("/api/dashboard", tokens[u]) for u in orders_by_user]
    with running_gateway(settings, workdir) as (base, process):
        endpoints = {}
        for name, requests in (("order", order_requests), ("dashboard", dashboard_requests)):
            asyncio.run(_load(base, requests[:50], 2, 1.0))  # warm up connections and caches
            pid = process.pid
            cpu_before, client_before = _cpu(pid), time.process_time()
            pids = {f"gateway-{name}": pid} if pid is not None else {}
            with profiling(pids, duration_s, workdir, profile) as outputs:
                result = asyncio.run(_load(base, requests, connections, duration_s))
            cpu_after = _cpu(pid)
            for path in outputs.values():
                if path.exists():
                    result["profile"] = summarise_profile(path.read_text(errors="replace").splitlines()).as_dict()
            result["client_cores"] = round((time.process_time() - client_before) / result["seconds"], 3)
            if cpu_before is not None and cpu_after is not None:
                result["gateway_cores"] = round((cpu_after - cpu_before) / result["seconds"], 3)
            endpoints[name] = result
    return {
        "connections": connections,
        "duration_s": duration_s,
        "users": len(orders_by_user),
        "orders": len(order_requests),
        "endpoints": endpoints,
    }


def _cpu(pid: int | None) -> float | None:
    from bench.probes import process_cpu_s

    return None if pid is None else process_cpu_s(pid)


def orders_in_views(client: Any, limit_users: int = 50) -> dict[str, list[str]]:
    """Users and their orders as the views hold them (for a stack whose orders the benchmark did not place)."""
    found: dict[str, list[str]] = {}
    for key in client.scan_iter(match="view:user-orders:*", count=500):
        name = key.decode() if isinstance(key, bytes) else str(key)
        orders = [o.decode() if isinstance(o, bytes) else str(o) for o in client.zrevrange(name, 0, 49)]
        if orders:
            found[name.removeprefix("view:user-orders:")] = orders
        if len(found) >= limit_users:
            break
    return found
