"""WebSocket consumers of the example site."""

import asyncio
import os
import re
from urllib.parse import parse_qs

from channels.consumer import AsyncConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer

# Application close code (4000-4999 is reserved for applications) sent
# before accept when the URL or query string is invalid.
INVALID_REQUEST_CLOSE_CODE = 4400

# Channels accepts group names shorter than 100 characters made of ASCII
# letters, digits, hyphens, underscores and periods. With the "chat_"
# prefix that leaves 94 characters for the room name.
ROOM_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,94}")


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """Broadcast ``{"message": "..."}`` to every client in the same room."""

    group_name: str | None = None

    async def connect(self) -> None:
        room_name = self.scope["url_route"]["kwargs"]["room_name"]
        if not ROOM_NAME_PATTERN.fullmatch(room_name):
            await self.close(code=INVALID_REQUEST_CLOSE_CODE)
            return

        self.group_name = f"chat_{room_name}"
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group_name is not None:
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        message = content.get("message") if isinstance(content, dict) else None
        if not isinstance(message, str):
            await self.send_json({"error": 'Expected an object {"message": "<text>"}.'})
            return

        await self.channel_layer.group_send(
            self.group_name, {"type": "chat.message", "message": message}
        )

    async def chat_message(self, event: dict) -> None:
        await self.send_json({"message": event["message"]})


class EchoConsumer(AsyncWebsocketConsumer):
    """Send every text frame back as text and every binary frame as binary."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)


class TestConsumer(AsyncWebsocketConsumer):
    """Act out one connection scenario for the end-to-end tests.

    Only the tests use this consumer, and a real site would not route it.
    The ``action`` query parameter selects the scenario:

    - ``echo`` (also when ``action`` is missing): accept and echo frames.
    - ``reject``: close with code 4403 before accept.
    - ``raise_before_accept``: raise ``RuntimeError`` in ``connect``.
    - ``raise_after_accept``: accept, then raise ``ValueError`` on the first
      received frame.
    - ``server_close&code=N``: accept, then close with code ``N`` on the
      first received frame. Without ``code`` the close carries no code.
    - ``slow&delay=S``: sleep ``S`` seconds (0 to 5) before accept, then echo.
    - ``deny``: send an HTTP 403 denial response when the server supports
      the ``websocket.http.response`` extension, else close before accept.
    - ``whoami``: accept, send ``pid:<server process id>``, then echo.
    - ``ignore_disconnect&delay=S``: accept and echo, then on
      ``websocket.disconnect`` sleep ``S`` seconds (0 to 30) before
      stopping, as a consumer whose cleanup hangs, so the application
      outlives its connection.
    - ``block&delay=S``: accept, then on the first received frame sleep
      ``S`` seconds (0 to 30) without echoing it or reading further
      messages, then echo later frames. A disconnect in that window stays
      unread until the sleep ends.

    An unknown action or an invalid parameter closes the connection with
    code 4400 before accept, so a typo in a test shows up as a rejection
    instead of an echo.
    """

    # The "Test" prefix would otherwise make pytest try to collect this
    # class in any test module that imports it.
    __test__ = False

    MAX_DELAY_SECONDS = 5.0
    # Longer than daphne's default --application-close-timeout of 10 s, so
    # a test can watch the server cancel the consumer, and still bounded.
    MAX_LINGER_SECONDS = 30.0

    action = "echo"
    close_code: int | None = None
    linger_seconds = 0.0

    async def connect(self) -> None:
        params = parse_qs(self.scope["query_string"].decode("latin-1"))
        self.action = params.get("action", ["echo"])[0]

        if self.action in ("echo", "raise_after_accept"):
            await self.accept()
        elif self.action == "reject":
            await self.close(code=4403)
        elif self.action == "raise_before_accept":
            raise RuntimeError("TestConsumer raised before accept, as action=raise_before_accept requests")
        elif self.action == "server_close":
            if "code" in params:
                self.close_code = _parse_int(params["code"][0])
                if self.close_code is None:
                    await self.close(code=INVALID_REQUEST_CLOSE_CODE)
                    return
            await self.accept()
        elif self.action == "slow":
            delay = _parse_float(params.get("delay", [""])[0])
            if delay is None or not 0 <= delay <= self.MAX_DELAY_SECONDS:
                await self.close(code=INVALID_REQUEST_CLOSE_CODE)
                return
            await asyncio.sleep(delay)
            await self.accept()
        elif self.action == "deny":
            await self._deny()
        elif self.action == "whoami":
            await self.accept()
            await self.send(text_data=f"pid:{os.getpid()}")
        elif self.action in ("ignore_disconnect", "block"):
            delay = _parse_float(params.get("delay", [""])[0])
            if delay is None or not 0 <= delay <= self.MAX_LINGER_SECONDS:
                await self.close(code=INVALID_REQUEST_CLOSE_CODE)
                return
            self.linger_seconds = delay
            await self.accept()
        else:
            await self.close(code=INVALID_REQUEST_CLOSE_CODE)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.action == "raise_after_accept":
            raise ValueError("TestConsumer raised after accept, as action=raise_after_accept requests")
        if self.action == "server_close":
            await self.close(code=self.close_code)
            return
        if self.action == "block":
            # Only the first frame blocks, so the consumer echoes again
            # afterwards and ends normally once it reads the disconnect.
            self.action = "echo"
            await asyncio.sleep(self.linger_seconds)
            return

        if text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)

    async def disconnect(self, code: int) -> None:
        if self.action == "ignore_disconnect":
            await asyncio.sleep(self.linger_seconds)

    async def _deny(self) -> None:
        # Daphne 4.2 does not offer the denial response extension, so it
        # gets the plain close, which it turns into HTTP 403 itself.
        if "websocket.http.response" not in (self.scope.get("extensions") or {}):
            await self.close()
            return

        body = b"Denied by TestConsumer (action=deny).\n"
        # AsyncWebsocketConsumer.send only sends frames, so the raw ASGI
        # messages go through the base class.
        await AsyncConsumer.send(
            self,
            {
                "type": "websocket.http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            },
        )
        await AsyncConsumer.send(self, {"type": "websocket.http.response.body", "body": body})


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
