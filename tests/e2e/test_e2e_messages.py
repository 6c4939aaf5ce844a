"""Message and byte counters under daphne and uvicorn, for echo and chat."""

import asyncio
import json

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

TIMEOUT = 10.0

ECHO_ROUTE = "ws/echo/"
CHAT_ROUTE = "ws/chat/<str:room_name>/"

ACTIVE = "django_websocket_connections_active"
CONNECTIONS = "django_websocket_connections_total"
DURATION_COUNT = "django_websocket_connection_duration_seconds_count"
CLOSED = "django_websocket_connections_closed_total"
RECEIVED = "django_websocket_messages_received_total"
SENT = "django_websocket_messages_sent_total"
RECEIVED_BYTES = "django_websocket_received_bytes_total"
SENT_BYTES = "django_websocket_sent_bytes_total"


def connections_ended(before, route, count):
    """Build a scrape condition: ``count`` more connections on ``route`` were closed and timed."""

    def condition(after):
        return (
            after.delta(before, DURATION_COUNT, route=route) >= count
            and after.total_delta(before, CLOSED, route=route) >= count
        )

    return condition


async def test_echo_counts_text_and_binary(server):
    before = await server.scrape()

    websocket = await server.connect("/ws/echo/")
    try:
        await websocket.send("héllo")
        text_reply = await asyncio.wait_for(websocket.recv(), TIMEOUT)
        await websocket.send(b"\x00\x01\x02")
        binary_reply = await asyncio.wait_for(websocket.recv(), TIMEOUT)
    finally:
        await asyncio.wait_for(websocket.close(), TIMEOUT)
    after = await server.scrape_until(connections_ended(before, ECHO_ROUTE, 1))

    assert text_reply == "héllo"
    assert binary_reply == b"\x00\x01\x02"
    assert after.delta(before, RECEIVED, route=ECHO_ROUTE) == 2
    assert after.delta(before, SENT, route=ECHO_ROUTE) == 2
    # "héllo" is 6 bytes in UTF-8, plus 3 bytes of the binary frame.
    assert after.delta(before, RECEIVED_BYTES, route=ECHO_ROUTE) == 9
    assert after.delta(before, SENT_BYTES, route=ECHO_ROUTE) == 9


async def test_chat_broadcast_reaches_room(server):
    path = f"/ws/chat/broadcast-{server.kind}/"
    outgoing = json.dumps({"message": "hi there"})
    # Channels' JSON consumer encodes with json.dumps defaults, so each
    # client receives the same text as was sent.
    expected_reply = json.dumps({"message": "hi there"})
    before = await server.scrape()

    sender = await server.connect(path)
    listener = await server.connect(path)
    try:
        opened = await server.scrape_until(lambda m: m.delta(before, ACTIVE, route=CHAT_ROUTE) >= 2)
        assert opened.delta(before, ACTIVE, route=CHAT_ROUTE) == 2
        assert opened.delta(before, CONNECTIONS, route=CHAT_ROUTE) == 2

        await sender.send(outgoing)
        sender_reply = await asyncio.wait_for(sender.recv(), TIMEOUT)
        listener_reply = await asyncio.wait_for(listener.recv(), TIMEOUT)
    finally:
        await asyncio.wait_for(sender.close(), TIMEOUT)
        await asyncio.wait_for(listener.close(), TIMEOUT)
    after = await server.scrape_until(connections_ended(before, CHAT_ROUTE, 2))

    assert sender_reply == expected_reply
    assert listener_reply == expected_reply
    assert after.delta(before, RECEIVED, route=CHAT_ROUTE) == 1
    assert after.delta(before, SENT, route=CHAT_ROUTE) == 2
    assert after.delta(before, RECEIVED_BYTES, route=CHAT_ROUTE) == len(outgoing)
    assert after.delta(before, SENT_BYTES, route=CHAT_ROUTE) == 2 * len(expected_reply)
    assert after.delta(before, ACTIVE, route=CHAT_ROUTE) == 0
    assert after.delta(before, CONNECTIONS, route=CHAT_ROUTE) == 2
    assert after.delta(before, CLOSED, route=CHAT_ROUTE, code="1000", initiator="client") == 2
    assert after.total_delta(before, CLOSED, route=CHAT_ROUTE) == 2
