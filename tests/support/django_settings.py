"""Django settings for the Channels app of the framework tests, configured in code.

No project, no database: ``AuthMiddlewareStack`` needs sessions and the auth
app, and finds no user without touching a database when the client sends no
session cookie; the signed-cookie session engine keeps sessions in the cookie.
"""

from __future__ import annotations

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
        DATABASES={},
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        USE_TZ=True,
    )
    django.setup()


#: ROOT_URLCONF: the HTTP side serves nothing; the WebSocket routes are Channels'.
urlpatterns: list[object] = []
