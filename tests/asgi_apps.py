"""Small ASGI applications and consumers that the unit tests wrap."""

from __future__ import annotations

import asyncio

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import URLRouter
from django.urls import path, re_path


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)

    async def connect(self):
        await self.accept()


class CloseOnMessageConsumer(AsyncWebsocketConsumer):
    """Accept, then close with the code given as the first text message."""

    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.close(code=int(text_data) if text_data != "none" else None)


class RejectConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.close(code=4403)


class RaiseBeforeAcceptConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        raise RuntimeError("connect failed")


class RaiseAfterAcceptConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        raise ValueError("bad message")


def router() -> URLRouter:
    return URLRouter(
        [
            path("ws/echo/", EchoConsumer.as_asgi()),
            path("ws/chat/<str:room_name>/", EchoConsumer.as_asgi()),
            re_path(r"^ws/legacy/(?P<id>\d+)/$", EchoConsumer.as_asgi()),
            path("ws/close/", CloseOnMessageConsumer.as_asgi()),
            path("ws/reject/", RejectConsumer.as_asgi()),
            path("ws/raise-before/", RaiseBeforeAcceptConsumer.as_asgi()),
            path("ws/raise-after/", RaiseAfterAcceptConsumer.as_asgi()),
        ]
    )


class ScriptedApp:
    """A raw ASGI application that plays back a list of steps.

    Steps are messages to send, the string "receive" to await one message,
    ("raise", exception) or ("sleep", seconds). ``received`` keeps what the
    application got.
    """

    def __init__(self, *steps) -> None:
        self.steps = steps
        self.received: list[dict] = []
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.scopes.append(scope)
        for step in self.steps:
            if step == "receive":
                self.received.append(await receive())
            elif isinstance(step, tuple) and step[0] == "raise":
                raise step[1]
            elif isinstance(step, tuple) and step[0] == "sleep":
                await asyncio.sleep(step[1])
            else:
                await send(step)
