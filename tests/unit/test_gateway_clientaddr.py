"""The client address behind trusted proxies (gateway/clientaddr.py), alone and as the rate limit's key."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from pydantic import ValidationError

from common.settings import Settings
from gateway.clientaddr import client_address, forwarded_chain, parse_address, parse_networks
from tests.gateway_support import Client, Env

pytestmark = pytest.mark.unit

PROXIES = parse_networks("10.0.0.0/8, 192.0.2.10, 2001:db8:1::/48")


@pytest.mark.parametrize(
    ("peer", "chain", "client"),
    [
        ("203.0.113.7", [], "203.0.113.7"),  # no proxy
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),  # an untrusted peer's header is ignored
        ("10.1.2.3", [], "10.1.2.3"),  # a trusted peer that forwarded nothing is the client itself
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # what the client wrote stays unread
        ("10.1.2.3", ["6.6.6.6", "198.51.100.1", "192.0.2.10"], "198.51.100.1"),  # through two trusted proxies
        ("10.1.2.3", ["10.9.9.9", "192.0.2.10"], "10.9.9.9"),  # every hop trusted: the farthest
        ("10.1.2.3", ["6.6.6.6", "unknown"], "10.1.2.3"),  # not an address: stop at the proxy that passed it on
        ("10.1.2.3", ["198.51.100.1", "_hidden", "192.0.2.10"], "192.0.2.10"),
        ("10.1.2.3", ["198.51.100.1:4711"], "198.51.100.1"),
        ("10.1.2.3", ["[2001:db8::7]:4711"], "2001:db8::7"),
        ("10.1.2.3", ["2001:db8::7"], "2001:db8::7"),
        ("10.1.2.3", ['"[2001:db8::7]"'], "2001:db8::7"),
        ("10.1.2.3", ["::ffff:198.51.100.1"], "198.51.100.1"),
        ("2001:db8:1::5", ["198.51.100.1"], "198.51.100.1"),  # an IPv6 proxy
        ("::ffff:10.1.2.3", ["198.51.100.1"], "198.51.100.1"),  # the peer as a mapped address
        (None, ["198.51.100.1"], "unknown"),
    ],
)
def test_the_client_is_the_first_untrusted_hop_from_the_right(peer: str | None, chain: list[str], client: str) -> None:
    assert client_address(peer, chain, PROXIES) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address("10.1.2.3", ["198.51.100.1"], ()) == "10.1.2.3"


def test_forwarding_headers_are_read_in_order_across_lines() -> None:
    assert forwarded_chain("x-forwarded-for", ["6.6.6.6, 198.51.100.1", "192.0.2.10"]) == [
        "6.6.6.6",
        "198.51.100.1",
        "192.0.2.10",
    ]
    forwarded = ['for=6.6.6.6;proto=http, For="[2001:db8::7]:4711"', "by=10.0.0.1;for=198.51.100.1", "proto=https"]
    assert forwarded_chain("forwarded", forwarded) == ["6.6.6.6", '"[2001:db8::7]:4711"', "198.51.100.1", "unknown"]


@pytest.mark.parametrize(
    "text", ["", "unknown", "_hidden", "300.1.1.1", "1.2.3.4:80:90", "1.2.3.4:x", "[::1", "[::1]x", "example.com"]
)
def test_what_is_not_an_address_is_none(text: str) -> None:
    assert parse_address(text) is None


def test_trusted_proxies_are_checked_when_the_settings_are_read() -> None:
    assert Settings(gateway_trusted_proxies="10.0.0.0/8, 127.0.0.1").gateway_trusted_proxies
    with pytest.raises(ValidationError, match="not-an-address"):
        Settings(gateway_trusted_proxies="10.0.0.0/8, not-an-address")
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        parse_networks("10.0.0.0/33")
    assert Settings(gateway_forwarded_header="Forwarded").gateway_forwarded_header == "forwarded"  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="gateway_forwarded_header"):
        Settings(gateway_forwarded_header="X-Real-IP")  # type: ignore[arg-type]


# --- as the rate limit's key (the test client connects from 127.0.0.1) ----------------------------------------


def statuses(answers: list[Any]) -> list[int]:
    return [answer.status for answer in answers]


def test_a_trusted_proxy_gives_each_forwarded_client_its_own_budget(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    env = Env(rate_limit_requests=2, rate_limit_window_s=60, gateway_trusted_proxies="127.0.0.1")

    async def scenario(client: Client) -> None:
        def via(address: str) -> dict[str, str]:
            return {"X-Forwarded-For": f"6.6.6.6, {address}"}  # the client's own claim, then the proxy's

        first = [await client.get("/api/dashboard", headers=via("198.51.100.1")) for _ in range(3)]
        assert statuses(first) == [401, 401, 429]
        assert (await client.get("/api/dashboard", headers=via("198.51.100.2"))).status == 401
        # not the header this proxy appends to: unread, so these count against the proxy's own address
        other_header = [await client.get("/api/dashboard", headers={"Forwarded": "for=198.51.100.3"}) for _ in range(3)]
        assert statuses(other_header) == [401, 401, 429]

    env.run(scenario)
    clients = [json.loads(r.getMessage())["client"] for r in caplog.records if r.name == "gateway.access"]
    assert clients == ["198.51.100.1"] * 3 + ["198.51.100.2"] + ["127.0.0.1"] * 3


def test_forwarded_is_read_instead_when_configured() -> None:
    env = Env(
        rate_limit_requests=1,
        rate_limit_window_s=60,
        gateway_trusted_proxies="127.0.0.0/8",
        gateway_forwarded_header="forwarded",
    )

    async def scenario(client: Client) -> None:
        one = {"Forwarded": 'for="[2001:db8::7]:4711";proto=https'}
        assert statuses([await client.get("/api/dashboard", headers=one) for _ in range(2)]) == [401, 429]
        assert (await client.get("/api/dashboard", headers={"Forwarded": "for=198.51.100.9"})).status == 401
        spoofed = {"X-Forwarded-For": "198.51.100.10"}  # not the header this proxy appends to: not read
        assert (await client.get("/api/dashboard", headers=spoofed)).status == 401  # the proxy's own budget
        assert (await client.get("/api/dashboard", headers=spoofed)).status == 429

    env.run(scenario)


def test_without_trusted_proxies_a_forwarding_header_buys_no_fresh_budget() -> None:
    env = Env(rate_limit_requests=2, rate_limit_window_s=60)

    async def scenario(client: Client) -> None:
        spoofs = [{"X-Forwarded-For": f"198.51.100.{n}", "Forwarded": f"for=198.51.100.{n}"} for n in range(4)]
        answers = [await client.get("/api/dashboard", headers=spoof) for spoof in spoofs]
        assert statuses(answers) == [401, 401, 429, 429]

    env.run(scenario)
