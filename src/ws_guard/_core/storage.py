"""The guard's shared storage: a ``limits`` async storage built from a URI.

The URI is checked and the modules are imported at construction (an import
on the event loop blocks every connection); the storage itself (and, for Redis, the
redis-py client inside it) is created in the running loop at guard startup
and closed at shutdown, so nothing binds to a loop at import or in
``__init__``. Rules that need storage ask ``guard.storage`` after startup.

The same object runs the guard's one maintenance task: rules register
periodic jobs (connection-slot heartbeats, sweeps of expired in-memory keys)
instead of starting a task each.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, cast
from urllib.parse import urlparse

import anyio

from ws_guard._core import tasks as _tasks
from ws_guard.errors import ConfigurationError, NotStartedError

logger = logging.getLogger("ws_guard")

MEMORY_SCHEMES = ("memory",)
REDIS_SCHEMES = ("redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")

#: redis-py options ws_guard sets unless the URI's query string says otherwise
#: (redis-py lets query parameters win). A hung Redis must not hang handshakes,
#: and redis-py's default of 10 retries with back-off would hold a handshake
#: for seconds during an outage; one immediate retry still heals the stale
#: pooled connections a Redis restart leaves behind.
REDIS_DEFAULTS: dict[str, float] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
#: Connections in the pool of a single Redis (``redis://``, ``rediss://``,
#: ``redis+unix://``; ``?max_connections=`` in the URI wins). redis-py's own
#: pool raises ``MaxConnectionsError`` for the command after the last one, so
#: a burst of handshakes against a healthy Redis would count as an outage;
#: ws_guard's pool makes that command wait for a free connection instead, at
#: most ``socket_timeout``.
REDIS_MAX_CONNECTIONS = 100
_POOLED_SCHEMES = ("redis", "rediss", "redis+unix")
#: A ``password=`` (or ``sentinel_password=``, ...) query parameter's value.
_QUERY_PASSWORD = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)

Job = Callable[[], Awaitable[None]]


class SharedStorage:
    """One ``limits`` async storage per guard, plus its maintenance task."""

    def __init__(self, uri: str) -> None:
        if not isinstance(uri, str) or "://" not in uri:
            raise ConfigurationError(
                f"storage must be a URI such as 'memory://' or 'redis://host:6379/0', not {uri!r}"
            )
        scheme = urlparse(uri).scheme
        if scheme not in MEMORY_SCHEMES + REDIS_SCHEMES:
            raise ConfigurationError(
                f"storage scheme {scheme!r} in {_redact(uri)!r} is not supported; use one of "
                f"{', '.join(s + '://' for s in MEMORY_SCHEMES + REDIS_SCHEMES)}"
            )
        if scheme in REDIS_SCHEMES and importlib.util.find_spec("redis") is None:
            raise ConfigurationError(
                f"storage {_redact(uri)!r} needs redis-py: pip install 'ws-guard[redis]'"
            )
        self.uri = uri
        self.scheme = scheme
        self.is_memory = scheme in MEMORY_SCHEMES
        # Imported here, not in open(): open() runs on the event loop (at
        # startup, or on the first handshake under a server without lifespan),
        # and importing limits' storage modules blocks it for ~50 ms.
        from limits.storage import storage_from_string

        self._storage_from_string = storage_from_string
        self._redis = None if self.is_memory else _RedisParts.load()
        self._limits: Any = None
        self._pool: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
        self._jobs: list[_Job] = []
        self._task: _tasks.Job[None] | None = None
        self._run_token: object | None = None
        self._wake: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"SharedStorage({_redact(self.uri)!r}, open={self.is_open})"

    # -- lifecycle ------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._limits is not None

    async def open(self) -> None:
        """Create the ``limits`` storage in the running loop (idempotent)."""
        if self._limits is not None:
            return
        storage_from_string = self._storage_from_string
        redis = self._redis
        if redis is None:
            self._limits = storage_from_string("async+memory://")
            return
        options: dict[str, Any] = dict(REDIS_DEFAULTS)
        # Retry a dropped connection, never a timeout: a Redis that hangs
        # would otherwise cost every call twice the socket timeout.
        options["retry"] = redis.Retry(
            redis.NoBackoff(), 1, supported_errors=(redis.ConnectionError,)
        )
        if self.scheme in _POOLED_SCHEMES:
            self._pool = _blocking_pool(redis, self.uri, options)
            options["connection_pool"] = self._pool
        # limits' coredis default does not work with current coredis; redis-py does.
        self._limits = storage_from_string(
            "async+" + self.uri, implementation="redispy", **cast(Any, options)
        )
        self._errors = (
            redis.RedisError,
            redis.RedisClusterException,
            OSError,
            asyncio.TimeoutError,
        )

    async def close(self) -> None:
        """Stop the maintenance task and close Redis connections (idempotent)."""
        task, self._task = self._task, None
        self._run_token = None  # the loop ends by itself once let go (see _run)
        await _tasks.stop(task)
        self._jobs.clear()
        self._wake = None  # bound to this loop; a restart may run in another
        storage, self._limits = self._limits, None
        if storage is None or self.is_memory:
            return
        bridge = storage.bridge
        clients = {id(c): c for c in (bridge.get_connection(), bridge.get_connection(True))}
        sentinel = getattr(bridge, "sentinel", None)
        for client in getattr(sentinel, "sentinels", ()):
            clients[id(client)] = client
        for client in clients.values():
            try:
                await client.aclose()
            except self._errors as exc:  # a dead Redis cannot be closed politely
                logger.debug("ws_guard: closing a Redis client failed: %r", exc)
        pool, self._pool = self._pool, None
        if pool is not None:  # a client never closes a pool it was given
            try:
                await pool.disconnect()
            except self._errors as exc:
                logger.debug("ws_guard: closing the Redis pool failed: %r", exc)

    # -- what rules use ---------------------------------------------------------
    @property
    def limits(self) -> Any:
        """The ``limits`` async storage (``MemoryStorage`` or a Redis storage)."""
        if self._limits is None:
            raise NotStartedError("the guard's storage is used before Guard.startup()")
        return self._limits

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions that mean "storage unavailable", for ``except`` clauses."""
        return self._errors

    def redis(self) -> Any:
        """The redis-py asyncio client behind the storage (primary for sentinel)."""
        if self.is_memory:
            raise RuntimeError("memory:// storage has no Redis client")
        return self.limits.bridge.get_connection()

    def script(self, source: str) -> StoredScript:
        """A Lua script on the storage's Redis, called as ``await s(keys, args)``."""
        return StoredScript(self.redis().register_script(source))

    async def pipelined(self, calls: Sequence[Call]) -> list[Any]:
        """Run *calls* in one ``pipeline(transaction=False)``: one round trip.

        Returns one entry per call, in order: its reply, or the storage error
        it met (a failure of the whole pipeline, such as a lost connection,
        is every call's). A script Redis does not know (``NOSCRIPT``: a
        restarted or flushed Redis) is loaded and its calls sent again, a
        second round trip on that rare path only; redis-py's own pipeline
        would ask ``SCRIPT EXISTS`` before every execution instead.
        """
        parts = self._redis
        if parts is None:
            raise RuntimeError("memory:// storage has no Redis client")
        results = await self._send(calls)
        unknown = [i for i, r in enumerate(results) if isinstance(r, parts.NoScriptError)]
        if not unknown:
            return results
        loaded: dict[str, BaseException | None] = {}
        for i in unknown:
            script = calls[i].script
            if script is None or script.sha in loaded:
                continue
            try:
                await self.redis().script_load(script.source)
            except self._errors as exc:
                loaded[script.sha] = exc
            else:
                loaded[script.sha] = None
        again = []
        for i in unknown:
            script = calls[i].script
            failed = None if script is None else loaded.get(script.sha)
            if failed is not None:
                results[i] = failed
            elif script is not None:
                again.append(i)
        for i, result in zip(again, await self._send([calls[i] for i in again]), strict=True):
            results[i] = result
        return results

    async def _send(self, calls: Sequence[Call]) -> list[Any]:
        if not calls:
            return []
        pipe = self.redis().pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(*call.command)
        try:
            return list(await pipe.execute(raise_on_error=False))
        except self._errors as exc:  # the connection failed: every call failed
            return [exc] * len(calls)

    # -- the maintenance task -----------------------------------------------------
    def add_job(self, interval: float, job: Job) -> object:
        """Run *job* every *interval* seconds on the guard's one maintenance task.

        Call from the loop (a rule's ``startup``); returns a handle for
        :meth:`remove_job`. A job handles its own storage errors.
        """
        if interval <= 0:
            raise ConfigurationError(f"job interval must be positive, not {interval!r}")
        entry = _Job(interval, job, anyio.current_time() + interval)
        self._jobs.append(entry)
        if self._wake is not None:
            self._wake.set()  # an earlier due time: the task recomputes its wait
        if self._task is None or self._task.done():
            token = self._run_token = object()
            self._task = _tasks.spawn(self._run(token))
        return entry

    def remove_job(self, handle: object) -> None:
        if isinstance(handle, _Job) and handle in self._jobs:
            self._jobs.remove(handle)

    async def _run(self, token: object) -> None:
        # One task per open storage; close() cancels it and waits until it
        # ended. A job that swallows the cancel (or, before Python 3.12, a
        # cancel lost as a wait ends) must not keep it running: the loop
        # also ends once close() has let go of its token.
        while self._run_token is token:
            now = anyio.current_time()
            due = [job for job in self._jobs if job.due <= now]
            for job in due:
                job.due = now + job.interval
                try:
                    await job.run()
                except Exception:  # a bug in one job must not stop the others
                    logger.exception("ws_guard maintenance job %r failed", job.run)
            wait = min((job.due for job in self._jobs), default=now + 3600.0)
            wait -= anyio.current_time()
            # anyio events cannot be cleared: a fresh one per wait.
            wake = self._wake = anyio.Event()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await wake.wait()


class Call(NamedTuple):
    """One Redis command of a pipeline: its words, and the script behind an ``EVALSHA``."""

    command: tuple[Any, ...]
    script: StoredScript | None = None


class StoredScript:
    """A Lua script registered on the storage's Redis.

    ``await s(keys, args)`` runs it alone (redis-py's ``EVALSHA``, loading
    it on ``NOSCRIPT``); ``s.call(keys, args)`` is the same as a
    :class:`Call` for :meth:`SharedStorage.pipelined`.
    """

    __slots__ = ("_registered", "sha", "source")

    def __init__(self, registered: Any) -> None:
        self._registered = registered
        #: The script's SHA1, as ``EVALSHA`` names it.
        self.sha: str = registered.sha
        self.source: str = registered.script

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._registered(keys=list(keys), args=list(args))

    def call(self, keys: Sequence[str], args: Sequence[Any]) -> Call:
        return Call(("EVALSHA", self.sha, len(keys), *keys, *args), self)


class _Job:
    __slots__ = ("due", "interval", "run")

    def __init__(self, interval: float, run: Job, due: float) -> None:
        self.interval = interval
        self.run = run
        self.due = due


class _RedisParts(NamedTuple):
    """The redis-py names open() needs, imported once at construction."""

    Retry: Any
    NoBackoff: Any
    ConnectionError: type[BaseException]
    RedisError: type[BaseException]
    #: A cluster none of whose nodes answers (not a RedisError in redis-py).
    RedisClusterException: type[BaseException]
    BlockingConnectionPool: Any
    NoScriptError: type[BaseException]
    parse_url: Callable[[str], Any]

    @classmethod
    def load(cls) -> _RedisParts:
        from redis.asyncio import BlockingConnectionPool
        from redis.asyncio.connection import parse_url
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError, RedisClusterException, RedisError
        from redis.utils import get_lib_version

        # redis-py reads its version from the package metadata on every new
        # connection; the first read imports importlib.metadata's lazy parts
        # (Python 3.13), which would happen on the first handshake's loop.
        read_version: Any = get_lib_version  # untyped in some redis-py releases
        read_version()
        return cls(
            Retry,
            NoBackoff,
            RedisConnectionError,
            RedisError,
            RedisClusterException,
            BlockingConnectionPool,
            NoScriptError,
            parse_url,
        )


def _blocking_pool(redis: _RedisParts, uri: str, options: dict[str, Any]) -> Any:
    """A redis-py pool whose commands wait for a free connection rather than fail."""
    url = "unix" + uri[len("redis+unix") :] if uri.startswith("redis+unix") else uri
    wait = redis.parse_url(url).get("socket_timeout", options["socket_timeout"])
    return redis.BlockingConnectionPool.from_url(
        url, max_connections=REDIS_MAX_CONNECTIONS, timeout=wait, **options
    )


def _redact(uri: str) -> str:
    """*uri* with each password replaced by ``***``, for messages and ``repr``.

    redis-py reads a password from the userinfo (``redis://user:pw@host``,
    RFC 3986 section 3.2.1) and from the query (``?password=pw``); both go.
    """
    parsed = urlparse(uri)
    if parsed.password:
        uri = uri.replace(f":{parsed.password}@", ":***@")
    return _QUERY_PASSWORD.sub(r"\1***", uri)
