"""A test-only token rule, so the client's refresh path runs on real uvicorn.

It stands in for the JWT rule: a token is "good-*", "short-*" (expires
``short_life`` seconds after the connection opens, closed with 1008
``token_expired`` from the guard's scheduler, as a live-expiry rule does),
"expired-*" (refused at the handshake with ``token_expired``) or anything
else (``token_invalid``). It reads the token from the query, the
``Authorization: Bearer`` header or the subprotocols ``[marker, token]``.
"""

from __future__ import annotations

from ws_guard.rules import Rule, Stage


class TestToken(Rule):
    stage = Stage.AUTH
    __test__ = False  # not a pytest class

    def __init__(self, source: str = "query", *, marker: str = "bearer", short_life: float = 0.3):
        super().__init__()
        self.source = source
        self.marker = marker
        self.short_life = short_life
        #: Every token presented at a handshake, in order, and the query strings.
        self.seen: list[str] = []
        self.queries: list[dict[str, list[str]]] = []

    def token(self, conn) -> str | None:
        if self.source == "query":
            return (conn.query.get("token") or [None])[0]
        if self.source == "header":
            value = conn.header("authorization") or ""
            return value[7:] if value.startswith("Bearer ") else None
        offered = conn.subprotocols
        if len(offered) >= 2 and offered[0] == self.marker:
            return offered[1]
        return None

    async def admit(self, conn):
        token = self.token(conn)
        self.queries.append(dict(conn.query))
        if token is None:
            return self.breach(1008, "token_missing")
        self.seen.append(token)
        if token.startswith("expired-"):
            return self.breach(1008, "token_expired")
        if not token.startswith(("good-", "short-")):
            return self.breach(1008, "token_invalid")
        conn.extra[self] = token
        return None

    def on_accept(self, conn, message) -> None:
        if self.source == "subprotocol":
            message["subprotocol"] = self.marker  # the token is never echoed

    def on_open(self, conn) -> None:
        if conn.extra.get(self, "").startswith("short-"):
            expired = self.breach(1008, "token_expired")
            conn.call_at(
                conn.guard.scheduler.now() + self.short_life, lambda: conn.close_soon(expired)
            )
