"""Keys that group connections for shared limits, and client address resolution.

``X-Forwarded-For`` is trusted only when the TCP peer is a configured proxy;
then the right-most hop that is not itself a trusted proxy is the client.
Anything left of that hop was written by the client and can be forged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ._errors import ConfigurationError

if TYPE_CHECKING:
    from ._connection import Connection

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
KeyFunc = Callable[["Connection"], "str | None"]


def by_connection(conn: Connection) -> str:
    """Each connection on its own (the default for :class:`MessageRate`)."""
    return conn.id


def by_ip(conn: Connection) -> str:
    """The client address, honouring ``X-Forwarded-For`` only from trusted proxies."""
    return conn.client_ip


def by_user(conn: Connection) -> str | None:
    """The verified JWT subject; needs a JWT rule in the same guard."""
    return conn.subject


def parse_trusted_proxies(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigurationError(
            f"trusted_proxies must be a list of addresses or CIDRs, not {values!r}"
        )
    networks: list[IPNetwork] = []
    for value in values:
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except (ValueError, AttributeError) as exc:
            raise ConfigurationError(
                f"trusted_proxies entry {value!r} is not an IP address or CIDR"
            ) from exc
        # Trusting every address lets any client write its own X-Forwarded-For
        # and pick the IP that by_ip limits count.
        if network.prefixlen == 0:
            raise ConfigurationError(
                f"trusted_proxies entry {value!r} trusts every address, so any client could "
                "forge X-Forwarded-For; name the proxies' own addresses or subnet"
            )
        networks.append(network)
    return tuple(networks)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:80"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve_client_ip(
    peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]
) -> str:
    """The address limits should count: the peer, or the right-most untrusted forwarded hop."""
    if peer is None:
        return "unknown"
    peer_ip = _parse_ip(peer)
    if peer_ip is None:
        return peer  # a unix socket path or similar: use it as it is
    if not trusted or not forwarded_for or not _is_trusted(peer_ip, trusted):
        return str(peer_ip)
    client = peer_ip
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = _parse_ip(hop)
        if hop_ip is None:
            # A trusted proxy passed on garbage: the last address we can vouch for wins.
            return str(client)
        client = hop_ip
        if not _is_trusted(hop_ip, trusted):
            return str(hop_ip)
    return str(client)


def _is_trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: tuple[IPNetwork, ...]
) -> bool:
    return any(address.version == net.version and address in net for net in trusted)
