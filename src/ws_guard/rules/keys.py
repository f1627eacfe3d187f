"""Keys that group connections for shared limits, and client address resolution.

``X-Forwarded-For`` is trusted only when the TCP peer is a configured proxy;
then the right-most hop that is not itself a trusted proxy is the client.
Anything left of that hop was written by the client and can be forged. The
header's value is every field line joined in order (``Connection.header``),
so a line the client wrote cannot hide the one its proxy appended.

``by_ip`` keys an IPv6 client by its network prefix (``Guard(ipv6_prefix=64)``):
one host usually holds a whole /64 (RFC 4291 section 2.5.1, SLAAC privacy
addresses, RFC 8981) and can change address per connection.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ws_guard._core.decisions import Close
from ws_guard.codes import POLICY_VIOLATION, REASON_CLIENT_UNKNOWN
from ws_guard.errors import ConfigurationError
from ws_guard.rules.base import Rule, Stage

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext

logger = logging.getLogger("ws_guard")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
KeyFunc = Callable[["RuleContext"], "str | None"]

#: ``client_ip`` of a connection without an IP peer (no ``scope["client"]``,
#: or a Unix socket path) and no trusted forwarded address.
UNKNOWN = "unknown"
DEFAULT_IPV6_PREFIX = 64


def by_connection(conn: RuleContext) -> str:
    """Each connection on its own (the default for :class:`MessageRate`)."""
    return conn.id


def by_ip(conn: RuleContext) -> str:
    """The client address: IPv4 as is, IPv6 as its ``/ipv6_prefix`` network.

    ``X-Forwarded-For`` counts only from ``trusted_proxies``. A connection
    whose address is unknown gets a key of its own (``unknown:<id>``), never
    one shared by every such client; a guard with a rule keyed by ``by_ip``
    refuses it first (1008 ``client_unknown``, see :class:`PeerRequired`).
    """
    ip = conn.client_ip
    if ip == UNKNOWN:
        return f"{UNKNOWN}:{conn.id}"
    return ip_key(ip, conn.guard.ipv6_prefix)


def ip_key(ip: str, ipv6_prefix: int) -> str:
    """The key of address *ip* (as :func:`resolve_client_ip` writes it).

    ``"203.0.113.5"`` stays itself; ``"2001:db8::1"`` with prefix 64 becomes
    ``"2001:db8::/64"``; with prefix 128 an IPv6 address stays itself.
    """
    if ":" not in ip or ipv6_prefix >= 128:
        return ip
    try:
        address = ipaddress.IPv6Address(ip)
    except ValueError:  # not produced by resolve_client_ip; keep it whole
        return ip
    shift = 128 - ipv6_prefix
    network = ipaddress.IPv6Address(int(address) >> shift << shift)
    return f"{network}/{ipv6_prefix}"


def check_ipv6_prefix(value: object) -> int:
    """``Guard(ipv6_prefix=...)``: an int from 1 to 128, else ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 128:
        raise ConfigurationError(
            f"ipv6_prefix must be a prefix length from 1 to 128 (64 keys a host's /64), "
            f"not {value!r}"
        )
    return value


#: A longer user key is replaced by a digest: every key names a map entry
#: and a Redis key, and ``iss``/``sub`` are as long as the client's token allows.
MAX_USER_KEY = 200


def by_user(conn: RuleContext) -> str | None:
    """The verified principal, JWT ``iss`` and ``sub`` together; needs a JWT rule.

    ``None`` while no ``sub`` is verified. The same ``sub`` from two issuers
    is two users (RFC 7519 section 4.1.2: a ``sub`` is unique within its
    issuer). The key is the JSON array ``["<iss>","<sub>"]`` (``null`` for a
    token without ``iss``), unambiguous whatever the strings contain; one
    longer than :data:`MAX_USER_KEY` characters becomes ``sha256:<32 hex>``.
    """
    subject = conn.subject
    if subject is None:
        return None
    claims = conn.claims
    return user_key(None if claims is None else claims.get("iss"), subject)


def user_key(issuer: object, subject: str) -> str:
    """``by_user``'s key for a verified ``iss`` claim (None when absent) and ``sub``.

    Without ``issuer=`` PyJWT lets any JSON value through as ``iss``; one that
    is not a string keys as ``false`` (never a string, never ``null``), so no
    nesting of the client's issuer's making is ever serialised again.
    """
    if issuer is not None and not isinstance(issuer, str):
        issuer = False
    return bounded_key(json.dumps([issuer, subject], separators=(",", ":")))


def bounded_key(key: str) -> str:
    """*key*, or ``sha256:<32 hex>`` of it when longer than :data:`MAX_USER_KEY` characters.

    Every limit's key passes here (``by_user``'s and a key callable's): a
    key names a map entry (strikes, bans, windows) and a Redis key, and a
    callable may return what a client wrote (a header, a query value).
    Lone surrogates are digested as their escapes, so this never raises.
    """
    if len(key) <= MAX_USER_KEY:
        return key
    raw = key.encode("utf-8", "surrogatepass")
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


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
    """The address limits should count: the peer, or the right-most untrusted forwarded hop.

    *forwarded_for* is the whole ``X-Forwarded-For`` value (all field lines
    joined with ``", "``). :data:`UNKNOWN` when the peer is not an IP address
    (no ``scope["client"]``, a Unix socket path): such peers cannot be told
    apart, and a forwarded address is only believed from a known proxy.
    """
    if peer is None:
        return UNKNOWN
    peer_ip = _parse_ip(peer)
    if peer_ip is None:
        return UNKNOWN
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


class PeerRequired(Rule):
    """Refuses a connection without a client address when a limit keys by ``by_ip``.

    Added by :class:`Guard` ahead of every other rule when one of its rules
    has ``key=rules.by_ip``. Without an address (``scope["client"]`` is
    ``None`` or a Unix socket path, and no trusted ``X-Forwarded-For``) an IP
    limit can only be shared by every such client, so one client would lock
    out all, or skipped, so no client would be limited. It closes 1008
    ``client_unknown`` instead, and logs once how to give ws_guard the address.
    Shadow when every ``by_ip`` rule is.
    """

    stage = Stage.CONNECT_RATE

    def __init__(self, *, enforce: bool = True) -> None:
        super().__init__(enforce=enforce)
        self.refusal = self.breach(POLICY_VIOLATION, REASON_CLIENT_UNKNOWN)
        self._warned = False

    async def admit(self, conn: RuleContext) -> Close | None:
        if conn.client_ip != UNKNOWN:
            return None
        if not self._warned:
            self._warned = True
            client = conn.scope.get("client")
            logger.warning(
                "ws_guard refuses connections without a client address (scope client=%r): "
                "rules keyed by rules.by_ip cannot tell such clients apart. Serve on TCP, or "
                "have the server set the client from its proxy's X-Forwarded-For "
                "(uvicorn --forwarded-allow-ips); see docs/rate-limits.md",
                client,
            )
        return self.refusal


def peer_checks(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """``(PeerRequired,)`` when a rule keys by ``by_ip``, else ``()``."""
    keyed = [rule for rule in rules if getattr(rule, "key", None) is by_ip]
    if not keyed:
        return ()
    return (PeerRequired(enforce=any(rule.enforce for rule in keyed)),)
