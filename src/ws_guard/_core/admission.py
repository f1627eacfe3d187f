"""Admission: the handshake's checks, the HTTP denial or accept-then-close, the message checks.

Gauges first (cheapest, and they protect the server), then the rules by
stage; a refused handshake is accepted and closed so a browser can read the
code (an HTTP denial only where asked and the server has the extension).
"""

from __future__ import annotations

import logging
import time
from typing import cast

from ws_guard._core.batch import HandshakeBatch
from ws_guard._core.closing import Closing
from ws_guard._core.decisions import CONSUME, Close
from ws_guard._core.fast_path import FusedRun
from ws_guard._core.info import ConnectionInfo
from ws_guard._core.states import CLOSED, GUARD_CLOSED
from ws_guard.rules.context import Checker, Verdict
from ws_guard.types import Message

logger = logging.getLogger("ws_guard")


class Admission(Closing):
    """The handshake and the connection's message checks."""

    __slots__ = ()

    async def handshake(self) -> bool:
        """Read ``websocket.connect`` and run admission; False when rejected."""
        message = await self._receive()
        if message["type"] != "websocket.connect":
            self.state = CLOSED  # the client left before the handshake finished
            return False
        self._connect_message = message
        guard = self.guard
        for rule in guard.plan.connect_rules:
            rule.on_connect(self.full)
        refusal = guard.lifecycle.drain_refusal()
        if refusal is not None:
            await self._reject(refusal)
            return False
        for gauge in guard.gauges:
            verdict = gauge.check(self.full)
            if verdict is not None:
                if verdict.shadow:
                    self._record_shadow(verdict)
                else:
                    await self._reject(verdict)
                    return False
        plan = guard.plan
        if plan.prepared_rules:  # Redis-backed rules: their calls go out together
            refusal = await self._admit_rules()
            if refusal is not None:
                await self._reject(refusal)
                await self._release()
                return False
        else:
            # Without them (memory storage) each rule decides in turn: the
            # loop inline, not _admit_rules, one frame less per handshake.
            for rule, holds in plan.admission_rules:
                if holds:
                    # Held before the await: a handshake cancelled inside admit()
                    # (the client left) still releases what admit() took so far.
                    if self._held is None:
                        self._held = []
                    self._held.append(rule)
                decision = await rule.admit(self.full)
                if decision is not None:
                    if decision.shadow:
                        self._record_shadow(decision)
                    else:
                        await self._reject(decision)
                        await self._release()
                        return False
        self.admitted = True
        self.opened_at = time.monotonic()
        guard.metrics.connection_opened()
        guard.live_connections.add(self.full)
        items = plan.checks
        # A leading fused run calls the rest of the plan itself: one call per
        # message. Its state is made first: checks are set up in plan order.
        lead = items[0].bind(self.full) if items and isinstance(items[0], FusedRun) else None
        checks: list[Checker] = []
        for item in items[0 if lead is None else 1 :]:
            check = item.checker(self.full)
            if check is not None:
                checks.append(check)
        self._check = self._combine(checks)
        if lead is not None:
            lead.rest, self._check = self._check, lead.check
            self._lead = lead
        self.scope["ws_guard"] = ConnectionInfo(self.full)
        return True

    async def _admit_rules(self) -> Close | None:
        """The rules' checks in stage order; the first enforced refusal, or ``None``.

        Redis-backed rules hand over their calls (``Rule.prepare``), which
        go out together in one round trip (:mod:`ws_guard._core.batch`).
        """
        conn = self.full
        guard = self.guard
        plan = guard.plan
        batch: HandshakeBatch | None = None
        for i, (rule, holds) in enumerate(plan.admission_rules):
            if holds:
                # Held before the await: a handshake cancelled inside admit()
                # (the client left) still releases what admit() took so far.
                if self._held is None:
                    self._held = []
                self._held.append(rule)
            if batch is not None and not batch.lets_rules_ahead and batch.waiting:
                # A waiting check expects to refuse: hear it before this rule
                # verifies a token or takes a slot (of the key the request
                # names: that key's own clients would be refused meanwhile).
                await batch.flush()
                if batch.refusal is not None:
                    return batch.refusal
            prepared = rule in plan.prepared_rules
            pending = rule.prepare(conn) if prepared else None
            if prepared and pending is None and batch is not None and batch.waiting:
                # The rule runs its own call this time (admit): after the waiting ones.
                await batch.flush()
                if batch.refusal is not None:
                    return batch.refusal
            if pending is not None and pending.call is None:
                decision = pending.decision
            elif pending is not None:
                if batch is None:
                    batch = HandshakeBatch(guard.storage, self._record_shadow)
                elif not batch.accepts(pending):
                    await batch.flush()
                    if batch.refusal is not None:
                        return batch.refusal
                batch.add(pending)
                if i < plan.last_prepared:
                    continue
                # No rule after this one runs before the calls are answered:
                # one that does I/O of its own would do it ahead of them.
                await batch.flush()
                if batch.refusal is not None:
                    return batch.refusal
                continue
            elif batch is not None and batch.waiting:
                token = batch.active()
                try:
                    decision = await rule.admit(conn)
                except Exception:
                    # A bug in the rule (raised on to the server, not hidden):
                    # the waiting checks still go out, so the attempt counts
                    # as it did when each rule awaited its own call, and a
                    # client that can trigger the bug is still rate limited.
                    await batch.flush()
                    raise
                finally:
                    batch.leave(token)
                if batch.refusal is not None:
                    return batch.refusal  # an earlier check refused while this one ran
            else:
                decision = await rule.admit(conn)
            if decision is None:
                continue
            if batch is not None and batch.waiting:
                # Decided after checks that wait for Redis: it counts only if they admit.
                batch.add(decision)
                if decision.shadow:
                    continue
                await batch.flush()
                return batch.refusal
            if not decision.shadow:
                return decision
            self._record_shadow(decision)
        if batch is not None and batch.waiting:  # the last prepared rule decided without a call
            await batch.flush()
            return batch.refusal
        return None

    async def refuse(self, close: Close) -> None:
        """Read the handshake and close it with *close*, accepting first whatever ``reject`` says.

        For a fault of the server's found before admission (a feature the
        backend cannot run): not a client's refusal, so never an HTTP denial.
        """
        message = await self._receive()
        if message["type"] != "websocket.connect":
            self.state = CLOSED  # the client left before the handshake finished
            return
        self.state = GUARD_CLOSED
        self._guard_close = close
        self.guard.metrics.handshakes_rejected += 1
        self.guard.reporter.record_close(self.full, close)
        await self._accept_and_close(close)

    async def _reject(self, close: Close) -> None:
        guard = self.guard
        self.state = GUARD_CLOSED
        self._guard_close = close
        guard.metrics.handshakes_rejected += 1
        if guard.reject == "http" and "websocket.http.response" in self.scope.get("extensions", {}):
            status, headers = guard.reporter.http_denial(close)
            # Counted as what the client got: the HTTP status, under the rule.
            guard.reporter.record_close(self.full, close, status=status)
            await self._send_quietly(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await self._send_quietly(
                {"type": "websocket.http.response.body", "body": close.wire_reason.encode()}
            )
            return
        guard.reporter.record_close(self.full, close)
        # A close before accept becomes an HTTP 403 that browsers report as
        # 1006; accepting first is the only way the code reaches a browser.
        await self._accept_and_close(close)

    def check_message(self, message: Message) -> Verdict:
        """Every message check's decision on *message* (off the fast path)."""
        check = self._check
        return None if check is None else check(message)

    def _combine(self, checks: list[Checker]) -> Checker | None:
        if not checks:
            return None
        return checks[0] if len(checks) == 1 else self._chain(tuple(checks))

    def _chain(self, checks: tuple[Checker, ...]) -> Checker:
        """Several checks as one: the first enforced breach or a consume ends it."""
        record_shadow = self._record_shadow

        def chain(message: Message) -> Verdict:
            for check in checks:
                verdict = check(message)
                if verdict is None:
                    continue
                if verdict is not CONSUME and cast(Close, verdict).shadow:
                    record_shadow(cast(Close, verdict))
                    continue
                return verdict
            return None

        return chain

    async def _release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        for rule in reversed(held):
            try:
                await rule.release(self.full)
            except Exception:
                logger.exception("ws_guard rule %r failed to release a connection", rule)
