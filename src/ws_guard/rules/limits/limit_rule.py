"""``LimitRule``: what the rules that count per key have in common.

``MessageRate``, ``ConnectRate`` and ``MaxConnectionsPerKey`` count events
(messages, handshakes, open connections) per key in the guard's storage.
They share the key check and storage id of their constructors, their repr,
binding to one guard, the periodic jobs they run on the storage's
maintenance task, and the close for a storage failure that the guard's
policy (``on_storage_error="deny"``) turns into 1013 ``storage_unavailable``.
Each rule keeps its own 1008 close, spelled out in its module.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar

from ws_guard._core.decisions import Close
from ws_guard.codes import (
    INTERNAL_ERROR,
    REASON_INTERNAL_ERROR,
    REASON_STORAGE_UNAVAILABLE,
    TRY_AGAIN_LATER,
)
from ws_guard.errors import NotStartedError
from ws_guard.rules.base import Rule
from ws_guard.rules.keys import KeyFunc, bounded_key
from ws_guard.rules.limits.keying import bind_once, check_key, key_label, require_subject

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

logger = logging.getLogger("ws_guard")


class LimitRule(Rule):
    """Base of the rules that limit events per key.

    A subclass sets ``public_name``, validates its arguments in its own
    order (then calls :meth:`_check_key` and :meth:`_storage_id`), and
    implements :meth:`_limit_arg` and :meth:`_limited`.
    """

    #: The class as users write it, in repr and error messages (a user's
    #: subclass keeps it).
    public_name: ClassVar[str]

    #: The key function: which group a connection counts in.
    key: KeyFunc
    #: Names this rule's keys in shared storage; give ``name=`` to keep it stable.
    id: str

    def __init__(self, *, enforce: bool, name: str | None) -> None:
        super().__init__(enforce=enforce, name=name)
        self._guard: Runtime | None = None
        self._jobs: list[object] = []
        self._key_failure_logged = False

    # -- construction ------------------------------------------------------
    def _check_key(self, key: object, *, per_connection: bool = True) -> KeyFunc:
        """*key*, checked (``ConfigurationError`` naming the rule and the bad value)."""
        return check_key(key, self.public_name, per_connection=per_connection)

    # -- reading a connection's key ----------------------------------------
    def _read_key(self, conn: RuleContext) -> str | Close | None:
        """*conn*'s key: a ``str``, an ``int`` as its decimal string, or ``None`` (not counted).

        A key longer than 200 characters is its digest, ``sha256:<32 hex>``
        (:func:`~ws_guard.rules.keys.bounded_key`), as ``by_user``'s is.

        A key callable that raises (a claim the token lacks) or returns
        anything else (a list, bytes, a float) is a bug in it, not the
        client's fault and never "no key" (which would switch the limit
        off): the rule's 1011 ``internal_error`` close, logged at ERROR once
        per rule, as a raising tier callable or ``Content`` check. Nothing
        raises out of ws_guard.
        """
        try:
            key: object = self.key(conn)  # typed str | None; user code may return anything
        except Exception as exc:  # noqa: BLE001 - the user's key is broken: logged, then 1011
            return self._key_failed(f"raised {exc!r}", exc)
        if key is None:
            return None
        if isinstance(key, str):
            # Bounded: a callable may return what a client wrote (a header).
            return bounded_key(key)
        if isinstance(key, int) and not isinstance(key, bool):
            return bounded_key(str(key))
        # The type only: a key that returns the claims by mistake would log them.
        return self._key_failed(f"returned a {type(key).__name__}, not a string", None)

    def _key_failed(self, what: str, exc: BaseException | None) -> Close:
        if not self._key_failure_logged:
            # Once per rule: a broken key fails every connection it sees.
            self._key_failure_logged = True
            logger.error(
                "ws_guard %r key %s; closing 1011 internal_error", self, what, exc_info=exc
            )
        return self.breach(INTERNAL_ERROR, REASON_INTERNAL_ERROR)

    def _storage_id(self, name: str | None, limits: str) -> str:
        """``name``, else ``<key label>:<limits>``: stable across processes and restarts."""
        return name or f"{key_label(self.key)}:{limits}"

    def _limit_arg(self) -> object:
        """The limit as the constructor's first argument takes it, for the repr."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{self.public_name}({self._limit_arg()!r}, key={key_label(self.key)}, "
            f"enforce={self.enforce!r}, name={self.name!r})"
        )

    def bind(self, guard: Runtime) -> None:
        self._guard = bind_once(self._guard, guard, self)
        require_subject(guard, self.key, self)

    def _runtime(self) -> Runtime:
        """The guard this rule is bound to; ``NotStartedError`` before that."""
        if self._guard is None:
            raise NotStartedError(f"{self.public_name} is not part of a Guard")
        return self._guard

    def _not_started(self) -> NotStartedError:
        """The error for state used before ``Guard.startup()`` created it."""
        return NotStartedError(f"{self.public_name} is used before Guard.startup()")

    # -- lifespan ----------------------------------------------------------
    def _every(self, guard: Runtime, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        """Run *job* every *seconds* on the storage's maintenance task until shutdown."""
        self._jobs.append(guard.storage.add_job(seconds, job))

    async def shutdown(self, guard: Runtime) -> None:
        """Stop the jobs :meth:`_every` started; a subclass then drops its own state."""
        for job in self._jobs:
            guard.storage.remove_job(job)
        self._jobs.clear()

    # -- decisions ---------------------------------------------------------
    def _limited(self, retry: float | None = None) -> Close:
        """The 1008 close for a key past its limit; *retry* in seconds, if the rule knows."""
        raise NotImplementedError

    def _unavailable(self) -> Close:
        """1013: storage failed and ``Guard(on_storage_error="deny")`` refuses to guess."""
        return self.breach(TRY_AGAIN_LATER, REASON_STORAGE_UNAVAILABLE)
