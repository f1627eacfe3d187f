"""Django settings for the Channels app of the framework tests, configured in code.

No project, no database: ``AuthMiddlewareStack`` needs sessions and the auth
app; the signed-cookie session engine keeps sessions in the cookie, and
:class:`MemberBackend` finds a logged-in user without a query.
"""

from __future__ import annotations

from dataclasses import dataclass

import django
from django.conf import settings


def configure() -> None:
    """Configure Django once per process (its settings are process-wide by design)."""
    if settings.configured:
        return
    settings.configure(
        SECRET_KEY="ws-guard-tests-only",
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "channels",
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        AUTHENTICATION_BACKENDS=[f"{__name__}.MemberBackend"],
        DATABASES={},
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        USE_TZ=True,
    )
    django.setup()


@dataclass(frozen=True)
class Member:
    """A logged-in user as Channels' ``scope["user"]`` shows it, without a user table."""

    pk: int
    is_authenticated = True
    is_anonymous = False


class MemberBackend:
    """An auth backend whose every user id is a member (Django calls ``get_user``)."""

    def get_user(self, user_id: int) -> Member:
        return Member(user_id)


def session_cookie(user_id: int) -> str:
    """A ``sessionid=...`` cookie header value that logs *user_id* in through MemberBackend."""
    configure()
    from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user_id)
    session[BACKEND_SESSION_KEY] = f"{__name__}.MemberBackend"
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


#: ROOT_URLCONF: the HTTP side serves nothing; the WebSocket routes are Channels'.
urlpatterns: list[object] = []
