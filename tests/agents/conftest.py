"""Fixtures of the agent-layer tests, and a runner for their ``async def`` tests (no pytest plugin needed).

Each async test runs in its own event loop (``asyncio.run``), bounded by :data:`ASYNC_TEST_TIMEOUT_S`. Faust
apps are built inside that loop (the ``faust_service`` fixture returns a factory for that reason).
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

import streams.bootstrap
from common.settings import Settings
from schemas.registry import MEMORY_URL
from tests.agents.harness import FaustService, FaustServiceFactory, Recorder

ASYNC_TEST_TIMEOUT_S = 10.0
UNREACHABLE_BROKER = "127.0.0.1:1"
"""Nothing listens there; nothing should try: no client connects until an app starts."""


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in inspect.signature(test).parameters}
    asyncio.run(asyncio.wait_for(test(**kwargs), ASYNC_TEST_TIMEOUT_S))
    return True


def agent_settings(data_dir: Path, bootstrap: str = UNREACHABLE_BROKER) -> Settings:
    """Settings of a service under test: in-memory tables, local data in ``data_dir``, no broker, the process's
    own schema registry."""
    return Settings(
        kafka_bootstrap=bootstrap, table_store="memory://", data_dir=str(data_dir), schema_registry_url=MEMORY_URL
    )


@pytest.fixture
def faust_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FaustServiceFactory:
    """Build a service with ``create_app``; its sender and ``make_durable`` feed a :class:`Recorder`.

    ``create_app`` takes its sender from ``streams.bootstrap.faust_sender`` and ``register_step``'s
    ``make_durable`` awaits ``built.confirm_writes``: those two are the seams replaced here. Call it inside the
    test's event loop.
    """

    def build(service: str, bootstrap: str = UNREACHABLE_BROKER) -> FaustService:
        recorder = Recorder()
        monkeypatch.setattr(streams.bootstrap, "faust_sender", lambda app: recorder.send)
        built = streams.bootstrap.create_app(service, agent_settings(tmp_path, bootstrap))
        # The producer is built, never started: table writes are never acknowledged here.
        monkeypatch.setattr(built, "confirm_writes", recorder.make_durable)
        return FaustService(built, recorder, monkeypatch)

    return build
