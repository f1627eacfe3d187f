"""A Django Channels echo consumer guarded by ws_guard, settings in this file.

Install, then run this file (or serve it from this file's directory with
``uvicorn channels_app:app``); the WebSocket is at ws://127.0.0.1:8000/ws:

    python -m pip install ws-guard channels django "uvicorn[standard]"
    python examples/channels_app.py

The guard wraps the whole ``ProtocolTypeRouter``, outside Channels' own
``AuthMiddlewareStack``: a connection the guard closes never reaches the
session and user lookup, and one it lets through sees ``scope["user"]`` as
usual. Channels' own refusals pass through unchanged: a consumer that calls
``close()`` in ``connect()`` before ``accept()`` (here ``/members``, for an
anonymous user) is the server's HTTP 403; ``close(code=..., reason=...)``
after ``accept()`` is the client's close frame.

No database: sessions live in signed cookies, and an anonymous user needs no
query. A real project keeps its settings in its settings module.
"""

from typing import Any

import django
import uvicorn
from django.conf import settings

if not settings.configured:
    settings.configure(
        SECRET_KEY="change-me",  # signs the session cookies
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
    )
    django.setup()

# Importing these needs the settings above.
from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import path

from ws_guard import Guard, WSGuardMiddleware, rules

urlpatterns: list[Any] = []  # no HTTP views

guard = Guard(
    rules=[
        rules.MaxMessageSize(64 * 1024),  # 1009 message_too_big
        rules.MessageTypes(text=True, binary=False),  # 1003 unsupported_data
    ],
    paths=["/ws", "/members"],
)


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: Any = None) -> None:
        await self.send(text_data=text_data)


class MembersOnly(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:  # set by AuthMiddlewareStack
            await self.close()  # before accept: HTTP 403
            return
        await self.accept()


async def lifespan(scope: Any, receive: Any, send: Any) -> None:
    # ProtocolTypeRouter routes no lifespan by itself; answering it lets the
    # server run ws_guard's startup and its drain on shutdown.
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


router = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "lifespan": lifespan,
        "websocket": AuthMiddlewareStack(
            URLRouter([path("ws", Echo.as_asgi()), path("members", MembersOnly.as_asgi())])
        ),
    }
)
app = WSGuardMiddleware(router, guard=guard)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=8000)
