"""A connection's states, as plain ints: the send fast path compares one attribute to one."""

CONNECTING = 0
OPEN = 1
CLOSED = 2  # closed by the client or the app; ws_guard stays transparent
GUARD_CLOSED = 3  # closed by ws_guard; the app sees a disconnect, its sends are dropped
#: Accepted, first-message token not verified yet: the app's sends are held
#: (see _core/auth_gate.py). Not OPEN, so both fast paths step aside at no cost.
AUTHENTICATING = 4

#: States in which the client may still get a close frame from ws_guard.
LIVE = (OPEN, AUTHENTICATING)
