"""The control plane across processes: Redis keys with a TTL, and pub/sub fan-out.

With a Redis storage every process that shares the guard's namespace
subscribes to one channel, ``<namespace>:control``. ``disconnect``,
``revoke``, bans and unbans are applied in the calling process, then
published; each other process applies them to its own connections and to
its mirror of revocations and bans. Revocations and bans are also Redis
keys with a TTL (``<namespace>:revoked:jti:<value>``, ``...:sub:<value>``,
``<namespace>:ban:<rule>:<key>`` with rule and key percent-encoded), so a
handshake reads revocations from Redis and a process that starts later
loads both when it subscribes.

Redis pub/sub delivers at most once, to the subscribers connected at that
moment (https://redis.io/docs/latest/develop/interact/pubsub/): a process
whose subscription is down while a disconnect is published misses it. The
subscriber reconnects with back-off; a lost subscription is logged once at
WARNING and its return at INFO. Only the calls an operation makes (publish,
revocation keys, the handshake's check) count as storage errors: a
background retry loop would make that counter depend on timing.

The subscriber is a task started by the guard's startup and stopped by its
shutdown; nothing here starts in ``__init__``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import anyio

from ws_guard._core import tasks as _tasks
from ws_guard._core.batch import waiting_batch
from ws_guard._core.storage import Call
from ws_guard._json import Unreadable, read_json

if TYPE_CHECKING:
    from ws_guard._core.storage import SharedStorage

logger = logging.getLogger("ws_guard")

#: Seconds one wait for a message lasts before the loop looks again (and a
#: cancel at shutdown lands): redis-py's socket timeout is 1 s too.
POLL = 0.5
#: Seconds between two subscribe attempts while Redis is down, at most.
MAX_BACKOFF = 5.0
#: Keys read per SCAN round when a process loads the revocations at startup.
SCAN_COUNT = 500

#: Sets each key to ARGV[2] for ARGV[1] ms unless it already lasts longer:
#: a later ``until`` (or ban end) wins.
SET_LATER_SCRIPT = """
local ttl = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ttl then
    redis.call('SET', key, ARGV[2], 'PX', ttl)
  end
end
return 1
"""

Apply = Callable[[dict[str, Any]], None]


class ControlChannel:
    """One guard's Redis channel and revocation keys; inactive on memory storage."""

    def __init__(
        self,
        storage: SharedStorage,
        namespace: str,
        report: Callable[[BaseException, str], bool],
        apply: Apply,
    ) -> None:
        self.storage = storage
        self.namespace = namespace
        self.channel = f"{namespace}:control"
        #: This process's id in messages: its own are not applied twice.
        self.origin = os.urandom(8).hex()
        self._report = report
        self._apply = apply
        self._task: _tasks.Job[None] | None = None
        #: The running listener's token; ``stop`` drops it (see ``_listen``).
        self._run_token: object | None = None
        #: Publishes started from sync code (a ban in a close hook), kept until done.
        self._pending: set[_tasks.Job[None]] = set()
        self._revoke: Any = None
        #: Set once the subscription is live (tests and readiness checks).
        self.subscribed = False

    @property
    def active(self) -> bool:
        """True with a Redis storage: operations fan out to other processes."""
        return not self.storage.is_memory

    def revocation_key(self, kind: str, value: str) -> str:
        """``<namespace>:revoked:<kind>:<value>``, *kind* ``jti`` or ``sub``."""
        return f"{self.namespace}:revoked:{kind}:{value}"

    # -- lifecycle (the guard's startup and shutdown) ---------------------------
    async def start(self) -> None:
        if not self.active or self._task is not None:
            return
        self._revoke = self.storage.script(SET_LATER_SCRIPT)
        token = self._run_token = object()
        self._task = _tasks.spawn(self._listen(token))

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._run_token = None  # the listener ends at its next turn even if a cancel is lost
        await _tasks.stop(task)
        for job in list(self._pending):
            await _tasks.stop(job)
        self._pending.clear()
        self.subscribed = False
        self._revoke = None

    # -- writing ------------------------------------------------------------------
    async def publish(self, op: dict[str, Any]) -> int | None:
        """Send *op* to every other subscribed process; how many got it (``None``: failed).

        A failure is counted and logged as a storage error; the caller has
        already applied *op* here.
        """
        message = json.dumps({**op, "origin": self.origin}, separators=(",", ":"))
        try:
            return int(await self.storage.redis().publish(self.channel, message))
        except self.storage.errors as exc:
            self._report(exc, "control publish")
            return None

    def ban_soon(self, rule: str, key: str, ttl: float, shadow: bool) -> None:
        """Store and publish a ban made here, from sync code: on a task of its own.

        Only while subscribed: not started in this loop, or Redis is down,
        nothing could send it.
        """
        if not self.subscribed:
            return
        job = _tasks.spawn(self._ban(rule, key, ttl, shadow))
        self._pending.add(job)
        job.add_done_callback(self._pending.discard)

    def strike_soon(self, rule: str, key: str) -> None:
        """Publish a strike counted here, from sync code: on a task of its own."""
        if not self.subscribed:
            return
        job = _tasks.spawn(self._strike(rule, key))
        self._pending.add(job)
        job.add_done_callback(self._pending.discard)

    async def _strike(self, rule: str, key: str) -> None:
        await self.publish({"op": "strike", "rule": rule, "key": key})

    async def _ban(self, rule: str, key: str, ttl: float, shadow: bool) -> None:
        await self.store_ban(rule, key, ttl, shadow)
        await self.publish({"op": "ban", "rule": rule, "key": key, "ttl": ttl, "shadow": shadow})

    async def store_revocation(self, jti: str | None, subject: str | None, ttl: float) -> bool:
        """Write the revocation keys with a TTL of *ttl* seconds; False when Redis failed."""
        keys = [
            self.revocation_key(kind, value)
            for kind, value in (("jti", jti), ("sub", subject))
            if value is not None
        ]
        return await self._set_later(keys, ttl, "1", "revoke")

    def ban_key(self, rule: str, key: str) -> str:
        """``<namespace>:ban:<rule>:<key>``, both percent-encoded (a rule id holds ``:``)."""
        return f"{self.namespace}:ban:{quote(rule, safe='')}:{quote(key, safe='')}"

    async def store_ban(self, rule: str, key: str, ttl: float, shadow: bool) -> bool:
        """Write a ban's key with a TTL of *ttl* seconds; False when Redis failed."""
        value = "shadow" if shadow else "ban"
        return await self._set_later([self.ban_key(rule, key)], ttl, value, "ban")

    async def delete_bans(self, key: str) -> bool:
        """Delete every rule's ban key of *key* (a SCAN); False when Redis failed."""
        client = self.storage.redis()
        pattern = f"{_glob_escape(self.namespace)}:ban:*:{_glob_escape(quote(key, safe=''))}"
        try:
            found = [raw async for raw in client.scan_iter(match=pattern, count=SCAN_COUNT)]
            if found:
                await client.delete(*found)
        except self.storage.errors as exc:
            self._report(exc, "unban")
            return False
        return True

    async def _set_later(self, keys: list[str], ttl: float, value: str, what: str) -> bool:
        try:
            await self._revoke(keys, [max(1, int(ttl * 1000)), value])
        except self.storage.errors as exc:
            self._report(exc, what)
            return False
        return True

    async def revoked(self, jti: object, subject: object) -> bool | None:
        """Whether Redis holds a revocation for *jti* or *subject*; ``None`` when it failed.

        One ``EXISTS`` round trip for both keys.
        """
        keys = [
            self.revocation_key(kind, value)
            for kind, value in (("jti", jti), ("sub", subject))
            if isinstance(value, str)
        ]
        if not keys:
            return False
        batch = waiting_batch()
        try:
            if batch is None:
                return int(await self.storage.redis().exists(*keys)) > 0
            # At a handshake whose earlier checks wait for Redis: one round trip
            # for all. One EXISTS per key: a cluster pipeline splits a
            # multi-key EXISTS by node, one reply per node, not per command.
            replies = await batch.flush([Call(("EXISTS", key)) for key in keys])
            if batch.refusal is not None:
                return False  # refused already: this answer decides nothing, counts nothing
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            return sum(int(reply) for reply in replies) > 0
        except self.storage.errors as exc:
            self._report(exc, "revocation check")
            return None

    # -- reading ------------------------------------------------------------------
    async def _listen(self, token: object) -> None:
        try:
            await self._listen_until_stopped(token)
        except Exception:
            # Not a storage error (those are retried below): a bug here or in
            # redis-py. Said at once, not when the task is collected: without
            # the channel, disconnects, revocations and bans stay local.
            logger.exception(
                "ws_guard control channel %s stopped: disconnects, revocations and bans "
                "from other processes no longer reach this one",
                self.channel,
            )
            raise

    async def _listen_until_stopped(self, token: object) -> None:
        # redis-py reads under a timeout, and a cancel that lands as that
        # timeout expires comes back as TimeoutError (a storage error here):
        # the loop must not go on after stop(), so it also checks its token.
        backoff = 0.1
        lost = False
        while self._run_token is token:
            try:
                client = self.storage.redis()
                # A cluster client learns its slots on its first command;
                # redis-py 8.1's cluster pub/sub looks a slot up before
                # that (KeyError). Idempotent, and free once initialised.
                await client.initialize()
                pubsub = client.pubsub()
                try:
                    # Subscribe first, then load: an operation published while
                    # the keys load waits in the subscription and is applied
                    # after them, instead of reaching no one.
                    await pubsub.subscribe(self.channel)
                    await self._load()
                    self.subscribed = True
                    if lost:
                        logger.info("ws_guard control channel %s subscribed again", self.channel)
                    lost = False
                    backoff = 0.1
                    while self._run_token is token:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=POLL
                        )
                        if message is not None:
                            self._receive(message.get("data"))
                finally:
                    self.subscribed = False
                    with anyio.move_on_after(1.0, shield=True):
                        await pubsub.aclose()
            except self.storage.errors as exc:
                if self._run_token is not token:
                    return
                if not lost:
                    logger.warning(
                        "ws_guard control channel %s lost (%r); retrying: disconnects and "
                        "revocations published meanwhile do not reach this process",
                        self.channel,
                        exc,
                    )
                lost = True
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _load(self) -> None:
        """Apply the revocations and bans already in Redis (made before this process subscribed).

        One pipelined round trip per :data:`SCAN_COUNT` keys, not one or two
        per key: 20 000 bans took 7 s here one by one.

        Keys are not only ws_guard's writing (an operator's ``SET``, another
        tool in the key space): one this process cannot apply (a name that is
        not UTF-8, a TTL past what a revocation may last) is skipped with a
        warning, as a malformed published message is; it never stops the listener.
        """
        client = self.storage.redis()
        prefix = f"{self.namespace}:revoked:"
        async for names in _scan_batches(client, prefix):
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.pttl(name)
            for name, ttl in zip(names, await pipe.execute(), strict=True):
                kind, _, value = name[len(prefix) :].partition(":")
                if kind in ("jti", "sub") and value and ttl > 0:
                    field = "jti" if kind == "jti" else "subject"
                    op = {"op": "revoke", field: value, "ttl": ttl / 1000.0, "load": True}
                    self._apply_safely(op)
        prefix = f"{self.namespace}:ban:"
        async for names in _scan_batches(client, prefix):
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.pttl(name)
                pipe.get(name)
            replies = await pipe.execute()
            for name, ttl, value in zip(names, replies[::2], replies[1::2], strict=True):
                rule, _, key = name[len(prefix) :].partition(":")
                if rule and key and ttl > 0:
                    self._apply_safely(
                        {
                            "op": "ban",
                            "rule": unquote(rule),
                            "key": unquote(key),
                            "ttl": ttl / 1000.0,
                            "shadow": value in (b"shadow", "shadow"),
                        }
                    )

    def _receive(self, data: object) -> None:
        """Apply one published operation; a malformed one is logged and dropped."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        op = read_json(text) if isinstance(text, str) else Unreadable.NOT_JSON
        if not isinstance(op, dict) or op.get("origin") == self.origin:
            if not isinstance(op, dict):
                logger.warning("ws_guard ignored a control message that is not a JSON object")
            return
        self._apply_safely(op)

    def _apply_safely(self, op: dict[str, Any]) -> None:
        """Apply *op*; one this process cannot apply is logged and dropped, never raised."""
        try:
            self._apply(op)
        except (ValueError, TypeError, KeyError) as exc:  # ConfigurationError is a ValueError
            logger.warning("ws_guard ignored a control message it cannot apply: %s", exc)


async def _scan_batches(client: Any, prefix: str) -> AsyncIterator[list[str]]:
    """The key names under *prefix*, at most :data:`SCAN_COUNT` at a time (SCAN MATCH)."""
    batch: list[str] = []
    async for raw in client.scan_iter(match=f"{_glob_escape(prefix)}*", count=SCAN_COUNT):
        name = _key_name(raw)
        if name is not None:
            batch.append(name)
        if len(batch) >= SCAN_COUNT:
            yield batch
            batch = []
    if batch:
        yield batch


def _key_name(raw: object) -> str | None:
    """A key name SCAN returned, as text; ``None`` (logged) for one that is not UTF-8."""
    if not isinstance(raw, bytes):
        return str(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        logger.warning("ws_guard ignored a control key that is not UTF-8: %r", raw[:80])
        return None


def _glob_escape(text: str) -> str:
    """*text* with Redis glob characters escaped, for ``SCAN MATCH``."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
