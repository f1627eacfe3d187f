"""``MaxConnectionsPerKey``: concurrent connections per key, else 1008 ``too_many_connections``.

A slot is taken at the handshake and given back in ``release``, which the
connection runs on every ending: client close, guard close, app crash,
server shutdown. In memory a slot is a count. With Redis, a key's slots are
a sorted set of connection ids scored by expiry time (Redis' own clock);
one heartbeat per guard, on the guard's maintenance task, pushes the expiry
of every slot this process holds, so the slots of a process that died
without releasing expire after ``3 * heartbeat`` seconds.

While Redis cannot answer and ``on_storage_error="allow"``, the cap holds
per process: a slot is taken only while this process holds fewer than
``limit`` for the key (as ``MessageRate`` counts per process in an outage).
Such slots are *pending*: not known to Redis. The next handshake for the
key writes every slot this process holds for it before counting, in the
same script, so connections admitted during the outage count against the
cap as soon as Redis answers again (the heartbeat writes them too).

A per-tier cap (a callable for ``limit``, :mod:`ws_guard.rules.limits.tiers`)
picks the limit per connection at admission; a tier's slots are counted
under ``<key>#<limit>``, so two tiers never share a count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ws_guard._core.batch import Pending
from ws_guard._core.decisions import Close
from ws_guard._validate import check_count, check_seconds
from ws_guard.codes import POLICY_VIOLATION, REASON_TOO_MANY_CONNECTIONS
from ws_guard.rules.base import Stage
from ws_guard.rules.keys import KeyFunc, by_ip
from ws_guard.rules.limits.keying import redis_key
from ws_guard.rules.limits.limit_rule import LimitRule
from ws_guard.rules.limits.tiers import Tiers, cap_tier, is_tiered, require_claims, tier_name

if TYPE_CHECKING:
    from ws_guard._core.info import ConnectionInfo
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

#: Drop expired slots, write back the slots this process holds (ARGV[5..]:
#: taken while Redis was away), then take one if there is room (or always,
#: in shadow mode).
ACQUIRE_SCRIPT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 5, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i])
end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) and ARGV[4] ~= '1' then return {0, n} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, redis.call('ZCARD', KEYS[1])}
"""

_PIPELINE_KEYS = 500  # keys per heartbeat pipeline round trip
#: Slots kept for removal after a write in flight; past this, they expire by TTL.
_LATE_MAX = 10_000


class _InFlight(NamedTuple):
    """``extra[rule]`` while a handshake's acquire call is unanswered: its Redis key.

    A handshake cancelled then (the server ended the handler) never reads
    the reply, yet Redis may have taken the slot; ``release`` finds this
    and has the slot taken out at the next write, instead of it blocking
    the key for ``3 * heartbeat`` seconds.
    """

    rkey: str


class MaxConnectionsPerKey(LimitRule):
    """At most ``limit`` open connections per key (default ``rules.by_ip``).

    ``limit`` may be a callable of the connection's
    :class:`~ws_guard.ConnectionInfo` returning an ``int``, called once at
    admission (after authentication, so it sees the verified claims).
    """

    stage = Stage.CONNECTION_CAP
    public_name = "MaxConnectionsPerKey"

    def __init__(
        self,
        limit: int | Callable[[ConnectionInfo], int],
        key: KeyFunc = by_ip,
        *,
        heartbeat: float = 10.0,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(enforce=enforce, name=name)
        #: The per-tier limit callable and its tiers; ``None`` for a fixed limit.
        self.tiers: Tiers[int] | None = None
        if is_tiered(limit):
            self.tiers = Tiers(self.public_name, limit, cap_tier)
            #: The fixed limit; 0 for a per-tier one.
            self.limit = 0
        else:
            self.limit = check_count("MaxConnectionsPerKey limit", limit)
        # Slots of a dead process live 3 heartbeats: past minutes, its clients
        # would stay locked out long after it died.
        self.heartbeat = check_seconds("MaxConnectionsPerKey heartbeat", heartbeat, maximum=300.0)
        self.key = self._check_key(key, per_connection=False)
        #: A slot lives this long in Redis without a heartbeat.
        self.slot_ttl = 3 * self.heartbeat
        self.id = self._storage_id(name, f"{limit}" if self.tiers is None else tier_name(limit))
        self._counts: dict[str, int] = {}  # memory storage
        self._held: dict[str, set[str]] = {}  # Redis storage: key -> ids this process holds
        self._pending: dict[str, set[str]] = {}  # of those, taken while Redis was away
        self._redis = False
        self._client: Any = None
        self._acquire: Any = None
        self._writes = 0  # calls in flight that write held slots back (heartbeat, reconcile)
        self._late: list[tuple[str, str]] = []

    def _limit_arg(self) -> object:
        return self.limit if self.tiers is None else self.tiers.func

    def bind(self, guard: Runtime) -> None:
        super().bind(guard)
        if self.tiers is not None:
            require_claims(guard, self)

    def count(self, key: str, tier: int | None = None) -> int:
        """Slots this process holds for *key* (in the tier whose limit is *tier*)."""
        if tier is not None:
            key = f"{key}#{tier}"
        if self._redis:
            return len(self._held.get(key, ()))
        return self._counts.get(key, 0)

    async def startup(self, guard: Runtime) -> None:
        storage = guard.storage
        self._redis = not storage.is_memory
        if not self._redis:
            return
        self._client = storage.redis()
        self._acquire = storage.script(ACQUIRE_SCRIPT)
        self._every(guard, self.heartbeat, self._beat)

    async def shutdown(self, guard: Runtime) -> None:
        await super().shutdown(guard)
        self._acquire = None
        client, self._client = self._client, None
        held, self._held = self._held, {}
        self._pending = {}
        if client is not None and held:  # free our slots now rather than at expiry
            try:
                await self._pipeline(client, held, lambda pipe, rkey, ids: pipe.zrem(rkey, *ids))
            except guard.storage.errors as exc:
                guard.report_storage_error(exc, "connection cap release")

    async def admit(self, conn: RuleContext) -> Close | None:
        found = self._resolve(conn)
        if not isinstance(found, tuple):
            return found
        key, limit = found
        if not self._redis:
            count = self._counts.get(key, 0) + 1
            if count > limit and self.enforce:
                return self._limited()
            self._counts[key] = count
        elif self._acquire is None:
            return None  # the guard shut down; nothing to count against
        else:
            taken, count = await self._take(conn, key, limit)
            return self._decide(conn, key, limit, taken, count)
        conn.extra[self] = key
        return self._limited() if count > limit else None  # over only in shadow mode

    def prepare(self, conn: RuleContext) -> Pending | None:
        """The slot's ``ACQUIRE_SCRIPT`` call (Redis storage), sent with the handshake's others.

        A slot taken for a handshake that an earlier check refuses is given
        back (``ZREM``). After an outage, while slots taken meanwhile wait to
        be written back, :meth:`admit` runs instead (it writes them first).
        """
        acquire = self._acquire
        if acquire is None or self._pending:
            return None
        found = self._resolve(conn)
        if not isinstance(found, tuple):
            return Pending.decided(found)
        key, limit = found
        rkey = self._rkey(key)
        args = [limit, int(self.slot_ttl * 1000), conn.id, 0 if self.enforce else 1]
        conn.extra[self] = _InFlight(rkey)

        async def finish(reply: Any) -> Close | None:
            taken, count = await self._taken(conn, key, limit, rkey, reply)
            return self._decide(conn, key, limit, taken, count)

        async def undo(reply: Any) -> None:
            if isinstance(reply, conn.guard.storage.errors):
                self._late_remove(rkey, conn.id)  # the script may still run once Redis answers
            elif int(reply[0]):
                client = self._client
                if client is not None:
                    try:
                        await client.zrem(rkey, conn.id)
                    except conn.guard.storage.errors:
                        # Not counted: this handshake's checks made no such
                        # call before; the next write takes the slot out.
                        self._late_remove(rkey, conn.id)
            # Only now: a cancel inside the ZREM leaves it for release.
            conn.extra.pop(self, None)

        return Pending(acquire.call([rkey], args), finish, undo)

    def _resolve(self, conn: RuleContext) -> tuple[str, int] | Close | None:
        """The connection's key (a tier's carries its limit) and limit, or None or a close."""
        limit = self.limit
        if self.tiers is not None:
            resolved = self.tiers.limit_for(conn, self)
            if isinstance(resolved, Close):
                return resolved
            limit = resolved
        key = self._read_key(conn)
        if key is None or isinstance(key, Close):
            return key
        if self.tiers is not None:
            key = f"{key}#{limit}"  # a tier counts on its own: its limit is in the key
        return key, limit

    def _decide(
        self, conn: RuleContext, key: str, limit: int, taken: bool | None, count: int
    ) -> Close | None:
        """The decision once Redis (or this process, in an outage) answered."""
        conn.extra.pop(self, None)  # answered: no longer in flight
        if taken is None:
            return self._unavailable()
        if not taken:
            return self._limited()
        self._held.setdefault(key, set()).add(conn.id)
        conn.extra[self] = key
        return self._limited() if count > limit else None  # over only in shadow mode

    def _late_remove(self, rkey: str, conn_id: str) -> None:
        if len(self._late) < _LATE_MAX:
            self._late.append((rkey, conn_id))

    async def _take(self, conn: RuleContext, key: str, limit: int) -> tuple[bool | None, int]:
        """Take a slot in Redis, or per process if Redis fails and the policy allows.

        Returns (taken, count after); ``taken`` is None when storage failed
        and the policy denies.
        """
        guard = conn.guard
        pending = self._pending.get(key)
        # After an outage, write back what this process holds for the key
        # before counting: the slots taken meanwhile, and any Redis lost.
        back = sorted(self._held.get(key, ())) if pending else []
        if back:
            self._writes += 1
        rkey = self._rkey(key)
        conn.extra[self] = _InFlight(rkey)
        reply: Any
        try:
            reply = await self._acquire(
                [rkey],
                [limit, int(self.slot_ttl * 1000), conn.id, 0 if self.enforce else 1, *back],
            )
        except guard.storage.errors as exc:
            reply = exc
        finally:
            if back:
                self._writes -= 1
        if pending is not None and back and not isinstance(reply, BaseException):
            pending.difference_update(back)
            if not pending:
                self._pending.pop(key, None)
        return await self._taken(conn, key, limit, rkey, reply)

    async def _taken(
        self, conn: RuleContext, key: str, limit: int, rkey: str, reply: Any
    ) -> tuple[bool | None, int]:
        """(taken, count after) from ``ACQUIRE_SCRIPT``'s reply or its storage error."""
        guard = conn.guard
        if isinstance(reply, BaseException):
            allow = guard.report_storage_error(reply, "connection cap")
            held = len(self._held.get(key, ()))
            if not allow or (held >= limit and self.enforce):
                # A script that timed out may still run once Redis answers:
                # take its slot out again at the next write.
                self._late_remove(rkey, conn.id)
                return (None if not allow else False), held
            self._pending.setdefault(key, set()).add(conn.id)
            return True, held + 1
        taken, count = reply
        if self._late and not self._writes:
            await self._remove_late()
        return bool(int(taken)), int(count)

    async def release(self, conn: RuleContext) -> None:
        key = conn.extra.pop(self, None)
        if key is None:
            return
        if isinstance(key, _InFlight):
            # Cancelled before the acquire's reply was read: Redis may hold
            # the slot. Taken out now, and again at the next write in case
            # the script reaches Redis after this ZREM.
            self._late_remove(key.rkey, conn.id)
            await self._zrem(conn, key.rkey)
            return
        if not self._redis:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)
            return
        ids = self._held.get(key)
        if ids is None:
            return  # the guard shut down and released everything already
        ids.discard(conn.id)
        if not ids:
            del self._held[key]
        pending = self._pending.get(key)
        if pending is not None:
            pending.discard(conn.id)
            if not pending:
                del self._pending[key]
        if self._client is None:
            return
        rkey = self._rkey(key)
        if self._writes and len(self._late) < _LATE_MAX:
            self._late.append((rkey, conn.id))  # a write in flight might put it back
        await self._zrem(conn, rkey)

    async def _zrem(self, conn: RuleContext, rkey: str) -> None:
        """Give *conn*'s slot under *rkey* back in Redis (no-op once shut down)."""
        client = self._client
        if client is None:
            return
        try:
            await client.zrem(rkey, conn.id)
        except conn.guard.storage.errors as exc:  # the slot expires without heartbeats
            conn.guard.report_storage_error(exc, "connection cap release")

    def _limited(self, retry: float | None = None) -> Close:
        # No retry hint: a slot frees when a connection ends, which no one can tell.
        return self.breach(POLICY_VIOLATION, REASON_TOO_MANY_CONNECTIONS)

    def _rkey(self, key: str) -> str:
        return redis_key(self._runtime().namespace, "slots", self.id, key)

    async def _beat(self) -> None:
        client, guard = self._client, self._guard
        if client is None or guard is None or not self._held:
            return
        self._writes += 1
        written = [(key, set(ids)) for key, ids in self._pending.items()]
        try:
            seconds, micros = await client.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            ttl_ms = int(self.slot_ttl * 1000)
            expires = now_ms + ttl_ms

            def refresh(pipe: Any, rkey: str, ids: set[str]) -> None:
                pipe.zadd(rkey, dict.fromkeys(ids, expires))
                pipe.zremrangebyscore(rkey, "-inf", now_ms)
                pipe.pexpire(rkey, ttl_ms)

            await self._pipeline(client, self._held, refresh)
        except guard.storage.errors as exc:
            guard.report_storage_error(exc, "connection cap heartbeat")
        else:
            for key, ids in written:  # Redis knows these slots now
                pending = self._pending.get(key)
                if pending is not None:
                    pending.difference_update(ids)
                    if not pending:
                        del self._pending[key]
        finally:
            self._writes -= 1
        if not self._writes:
            await self._remove_late()

    async def _remove_late(self) -> None:
        """Remove slots released while a write that could put them back was in flight."""
        client, guard = self._client, self._guard
        late, self._late = self._late, []
        if client is None or guard is None:
            return
        for start in range(0, len(late), _PIPELINE_KEYS):
            pipe = client.pipeline(transaction=False)
            for rkey, conn_id in late[start : start + _PIPELINE_KEYS]:
                pipe.zrem(rkey, conn_id)
            try:
                await pipe.execute()
            except guard.storage.errors as exc:  # those slots expire by TTL
                guard.report_storage_error(exc, "connection cap release")
                return

    async def _pipeline(self, client: Any, held: dict[str, set[str]], add: Any) -> None:
        items = [(key, set(ids)) for key, ids in held.items()]
        for start in range(0, len(items), _PIPELINE_KEYS):
            pipe = client.pipeline(transaction=False)
            for key, ids in items[start : start + _PIPELINE_KEYS]:
                add(pipe, self._rkey(key), ids)
            await pipe.execute()
