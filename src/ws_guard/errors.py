"""One exception hierarchy. Exceptions are for configuration only.

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
