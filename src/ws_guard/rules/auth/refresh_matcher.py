"""The built-in matcher of in-band refresh messages: ``{"type": "auth.refresh", "token": ...}``.

Every client message may pass here, so a message that is not a refresh is
told apart by one substring test (the refresh type as it appears in JSON,
``rules.fast.refresh_needle``) before any JSON is read.
"""

from __future__ import annotations

from collections.abc import Callable

from ws_guard._json import Unreadable, read_json
from ws_guard._validate import check_sync_callable
from ws_guard.errors import ConfigurationError
from ws_guard.rules.fast import refresh_needle
from ws_guard.types import Message

#: Room around the token in a JSON first or refresh message.
ENVELOPE_BYTES = 1024
#: Finds the token in an in-band refresh message; ``None`` for any other message.
RefreshMatcher = Callable[[Message], "str | None"]


def refresh_matcher(
    refresh: str | RefreshMatcher | None, field: str, max_token_bytes: int
) -> RefreshMatcher | None:
    """The function that finds the token in a refresh message, or ``None`` in any other."""
    if refresh is None or callable(refresh):
        check_sync_callable("JWTAuth refresh", refresh)
        return refresh
    if not isinstance(refresh, str) or not refresh:
        raise ConfigurationError(
            f"JWTAuth refresh must be a message type, a callable or None, not {refresh!r}"
        )
    if not isinstance(field, str) or not field:
        raise ConfigurationError(f"JWTAuth refresh_field must be a name, not {field!r}")
    needle = refresh_needle(refresh)  # the cheap prefilter
    envelope = max_token_bytes + ENVELOPE_BYTES  # bigger: app content, not a refresh

    def match(message: Message) -> str | None:
        text = message.get("text")
        if text is None or needle not in text or len(text) > envelope:
            return None
        value = read_json(text)
        if value is Unreadable.NOT_JSON:
            return None  # mentions the type, is no JSON: app content
        if value is Unreadable.REFUSED:
            return ""  # JSON naming the refresh type that cannot be read: token_invalid
        if not isinstance(value, dict) or value.get("type") != refresh:
            return None
        token = value.get(field)
        return token if isinstance(token, str) else ""  # a refresh without a token

    return match
