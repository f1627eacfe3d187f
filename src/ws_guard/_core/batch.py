"""One round trip for a handshake's Redis checks.

A Redis-backed rule can hand admission its call instead of awaiting it
(``Rule.prepare``): a :class:`Pending`, the command (script, keys, args) and
what turns the reply into the rule's decision. Admission collects them in a
:class:`HandshakeBatch` while the rules after them run, sends them together
in one ``pipeline(transaction=False)`` and decides in stage order, so the
first refusal in that order wins, as when each rule awaited its own call.

Order is kept by three rules:

* A call that cannot be taken back (``ConnectRate``'s hit: every attempt
  counts) joins only an empty batch, so no earlier check can refuse a
  handshake it has already counted.
* A call that can (a connection slot) is given back (``undo``) when an
  earlier check refuses: a second round trip, on the refused path only.
* A storage call a rule makes itself while calls wait (the shared
  revocation check inside the auth rule, :meth:`HandshakeBatch.flush` with
  *extra*) goes out in the same pipeline, after them; its answer counts
  only if they admitted.

The rules that run while calls wait (authentication) run before those
calls are answered, unless a waiting call's rule expects to refuse
(``Pending.ahead``: ``ConnectRate`` for a key it refused within the wait it
gave): so only the first over-the-rate attempt of a key has its token
verified before the refusal (CPU only; the auth rule's storage call rides
in the same round trip), and a client that keeps hammering is refused
before verification, as with one call per rule. Nor does a later rule's
call join such a call: a key that keeps hammering takes no slot, not even
for a round trip (a slot of the key its request names, whose own clients
would be refused meanwhile).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from ws_guard._core.decisions import Close

if TYPE_CHECKING:
    from ws_guard._core.storage import Call, SharedStorage

#: The reply of a call, or the storage error it met (an exception instance).
Finish = Callable[[Any], Awaitable["Close | None"]]
Undo = Callable[[Any], Awaitable[None]]

#: The batch of the handshake whose admission runs in this task, while a rule
#: that makes its own storage calls runs: the auth rule asks the guard's
#: revocation store, which has no connection to look the batch up on.
_CURRENT: ContextVar[HandshakeBatch | None] = ContextVar("ws_guard_handshake_batch", default=None)


class Pending:
    """A rule's handshake decision that waits for one Redis call, or one already made.

    *finish* turns the call's reply (or its storage error) into the rule's
    decision, as the rule's ``admit`` would; *undo* gives back what the call
    took when an earlier check refused the handshake (``None``: it cannot
    be, so the call goes out only with nothing before it).
    """

    __slots__ = ("ahead", "call", "decision", "finish", "undo")

    def __init__(
        self,
        call: Call | None,
        finish: Finish | None,
        undo: Undo | None = None,
        *,
        ahead: bool = True,
    ) -> None:
        self.call = call
        self.finish = finish
        self.undo = undo
        #: Whether the rules after this one may run before its answer; False
        #: when the rule expects to refuse (a key it refused moments ago).
        self.ahead = ahead
        self.decision: Close | None = None

    @classmethod
    def decided(cls, decision: Close | None) -> Pending:
        """A decision made without storage (no key, a failed key callable)."""
        pending = cls(None, None)
        pending.decision = decision
        return pending

    async def run(self, storage: SharedStorage) -> Close | None:
        """The decision with the call sent alone (``admit`` outside a batch)."""
        if self.call is None or self.finish is None:
            return self.decision
        (reply,) = await storage.pipelined([self.call])
        return await self.finish(reply)


class HandshakeBatch:
    """The calls and decisions of one handshake that wait for its round trip, in stage order."""

    __slots__ = ("_entries", "_record_shadow", "_storage", "refusal")

    def __init__(self, storage: SharedStorage, record_shadow: Callable[[Close], None]) -> None:
        self._storage = storage
        self._record_shadow = record_shadow
        self._entries: list[Pending | Close] = []
        #: The first enforced refusal in stage order, once decided.
        self.refusal: Close | None = None

    @property
    def waiting(self) -> bool:
        """True while a call waits to be sent."""
        return any(isinstance(entry, Pending) and entry.call is not None for entry in self._entries)

    @property
    def lets_rules_ahead(self) -> bool:
        """Whether a rule that is not batched may run before the waiting calls are answered."""
        return all(not isinstance(e, Pending) or e.ahead for e in self._entries)

    def accepts(self, pending: Pending) -> bool:
        """Whether *pending* may wait behind the calls already here (see the module)."""
        return pending.undo is not None or not self.waiting

    def add(self, entry: Pending | Close) -> None:
        """A rule's call, or a later rule's decision made while calls wait."""
        self._entries.append(entry)

    def active(self) -> Token[HandshakeBatch | None]:
        """Make this the batch a rule's own storage calls join; pass the result to ``leave``."""
        return _CURRENT.set(self)

    @staticmethod
    def leave(token: Token[HandshakeBatch | None]) -> None:
        _CURRENT.reset(token)

    async def flush(self, extra: Sequence[Call] = ()) -> list[Any]:
        """Send the waiting calls (and *extra*, last) in one pipeline, then decide in order.

        Returns *extra*'s replies or storage errors, in order. Sets
        :attr:`refusal` to the first enforced refusal; shadow decisions
        before it are recorded, those after it dropped, calls after it undone.
        """
        entries, self._entries = self._entries, []
        calls = [e.call for e in entries if isinstance(e, Pending) and e.call is not None]
        calls.extend(extra)
        replies = iter(await self._storage.pipelined(calls))
        for entry in entries:
            if isinstance(entry, Pending) and entry.call is None:
                decision = entry.decision
            elif isinstance(entry, Pending):
                reply = next(replies)
                if self.refusal is not None:
                    if entry.undo is not None:
                        await entry.undo(reply)
                    continue
                decision = None if entry.finish is None else await entry.finish(reply)
            else:
                decision = entry
            if decision is None or self.refusal is not None:
                continue
            if decision.shadow:
                self._record_shadow(decision)
            else:
                self.refusal = decision
        return list(replies)


def waiting_batch() -> HandshakeBatch | None:
    """The running handshake's batch when calls wait in it, else ``None``."""
    batch = _CURRENT.get()
    return batch if batch is not None and batch.waiting else None
