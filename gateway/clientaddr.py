"""Who the client is: the peer address, or the address a trusted proxy forwarded, never one a client claims.

The per-address rate limit (requests without a valid token) and the access log need the real client. A request
that reaches the gateway straight from its client has it as the TCP peer. Behind a reverse proxy the peer is
the proxy, and the client is in the header the proxy appends to: ``X-Forwarded-For`` (``client, proxy1, …``)
or RFC 7239 ``Forwarded`` (``for=client, for=proxy1``), chosen by ``PIPELINE_GATEWAY_FORWARDED_HEADER``.

Such a header is read **only when the peer is a trusted proxy** (``PIPELINE_GATEWAY_TRUSTED_PROXIES``,
addresses or networks; none by default), and then from the right: each entry was written by the hop before
it, so the walk goes past trusted proxies only, and the first address that is not a trusted proxy is the
client. Whatever a client wrote further left is never reached. An entry that is not an address (``unknown``, an
obfuscated ``_name``, garbage) stops the walk at the proxy that passed it on, so no client can pick the key its
requests are counted under. Only the one header chosen is read: a proxy appends to one header and passes the
other on as the client wrote it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN = "unknown"
"""The client of a request whose peer address is not known (not a TCP socket)."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks (``10.0.0.0/8, 127.0.0.1``); ValueError names a bad entry."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def parse_address(text: str) -> IPAddress | None:
    """An address as forwarding headers write it (``192.0.2.1``, ``192.0.2.1:4711``, ``[2001:db8::1]:4711``,
    ``2001:db8::1``), IPv4-mapped IPv6 as IPv4; None for anything else."""
    text = text.strip().strip('"')
    port = ""
    if text.startswith("["):
        text, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_chain(header: str, values: Iterable[str]) -> list[str]:
    """The hops one header lists, client first, from all its occurrences in order.

    ``x-forwarded-for``: comma-separated entries. ``forwarded``: the ``for=`` parameter of each element (an
    element without one counts as an unknown hop).
    """
    chain: list[str] = []
    for value in values:
        for element in value.split(","):
            if header == "x-forwarded-for":
                chain.append(element.strip())
                continue
            found = UNKNOWN
            for pair in element.split(";"):
                name, _, param = pair.partition("=")
                if name.strip().lower() == "for":
                    found = param.strip()
            chain.append(found)
    return chain


def client_address(peer: str | None, chain: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy, else the first untrusted hop from the right."""
    if peer is None:
        return UNKNOWN
    current = parse_address(peer)
    if current is None or not _trusted(current, trusted):
        return peer
    for hop in reversed(chain):
        forwarded = parse_address(hop)
        if forwarded is None:
            break  # not an address: the proxy that passed it on is as far as the chain can be believed
        current = forwarded
        if not _trusted(current, trusted):
            break
    return str(current)


def _trusted(address: IPAddress, trusted: Sequence[Network]) -> bool:
    return any(address.version == network.version and address in network for network in trusted)
