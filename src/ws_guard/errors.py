"""One exception hierarchy: configuration errors, and use before startup.

Decisions about clients are returned as values (:class:`ws_guard.Close`) and
never raised, so a bad client can never turn into an exception in the app.
"""

from __future__ import annotations


class WSGuardError(Exception):
    """Base class of every exception ws_guard raises."""


class ConfigurationError(WSGuardError, ValueError):
    """A rule, gauge or guard was built with a value that cannot work.

    Raised at construction, with the offending value in the message.
    """


class UnsupportedBackendError(ConfigurationError):
    """A configured feature needs asyncio and the server runs another backend (trio).

    Raised by :meth:`ws_guard.Guard.startup` (at lifespan startup, so the
    server reports it), naming the feature. Construction cannot know the
    backend: the server picks it when it runs.
    """


class NotStartedError(WSGuardError, RuntimeError):
    """A guard, its storage or a rule was used before :meth:`ws_guard.Guard.startup`.

    A misuse of the API, not a client's doing: the ASGI lifespan (or
    :class:`ws_guard.testing.ScriptedWebSocket`) starts the guard first. A
    ``RuntimeError`` too, as these misuses raised before this class existed.
    """
