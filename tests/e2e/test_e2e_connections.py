"""Accepted connections under daphne and uvicorn: the gauge, closes and errors."""

import asyncio
import os

import pytest
from websockets.exceptions import ConnectionClosed

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

TIMEOUT = 10.0

ECHO_ROUTE = "ws/echo/"
TEST_ROUTE = "ws/test/"

ACTIVE = "django_websocket_connections_active"
CONNECTIONS = "django_websocket_connections_total"
DURATION_COUNT = "django_websocket_connection_duration_seconds_count"
HANDSHAKES = "django_websocket_handshakes_total"
CLOSED = "django_websocket_connections_closed_total"
EXCEPTIONS = "django_websocket_exceptions_total"

# Code that each server puts in websocket.disconnect when the client drops
# the TCP connection without a close frame. Autobahn (daphne 4.2) reports
# 1006, "closed abnormally". Uvicorn 0.55's websockets-sansio protocol
# reports 1005, "no status code", for any loss after the handshake.
ABORT_CLOSE_CODES = {"daphne": "1006", "uvicorn": "1005"}


def connection_ended(before, route, count=1):
    """Build a scrape condition: ``count`` more connections on ``route`` were closed and timed."""

    def condition(after):
        return (
            after.delta(before, DURATION_COUNT, route=route) >= count
            and after.total_delta(before, CLOSED, route=route) >= count
        )

    return condition


async def test_open_connection_is_active(server):
    before = await server.scrape()

    websocket = await server.connect("/ws/echo/")
    try:
        during = await server.scrape_until(lambda m: m.delta(before, ACTIVE, route=ECHO_ROUTE) >= 1)

        assert during.delta(before, ACTIVE, route=ECHO_ROUTE) == 1
        assert during.delta(before, CONNECTIONS, route=ECHO_ROUTE) == 1
        assert during.delta(before, HANDSHAKES, route=ECHO_ROUTE, outcome="accepted") == 1
        assert during.total_delta(before, CLOSED, route=ECHO_ROUTE) == 0
        assert during.delta(before, DURATION_COUNT, route=ECHO_ROUTE) == 0
    finally:
        await asyncio.wait_for(websocket.close(), TIMEOUT)

    after = await server.scrape_until(connection_ended(before, ECHO_ROUTE))

    assert after.delta(before, ACTIVE, route=ECHO_ROUTE) == 0
    assert after.delta(before, CONNECTIONS, route=ECHO_ROUTE) == 1


async def test_client_close_counts_1000_client(server):
    before = await server.scrape()

    websocket = await server.connect("/ws/echo/")
    await asyncio.wait_for(websocket.close(code=1000), TIMEOUT)
    after = await server.scrape_until(connection_ended(before, ECHO_ROUTE))

    assert after.delta(before, CLOSED, route=ECHO_ROUTE, code="1000", initiator="client") == 1
    assert after.total_delta(before, CLOSED, route=ECHO_ROUTE) == 1
    assert after.delta(before, ACTIVE, route=ECHO_ROUTE) == 0
    assert after.delta(before, DURATION_COUNT, route=ECHO_ROUTE) == 1
    assert after.total_delta(before, EXCEPTIONS, route=ECHO_ROUTE) == 0


async def test_server_close_counts_4xxx_server(server):
    before = await server.scrape()

    websocket = await server.connect("/ws/test/?action=server_close&code=4001")
    await websocket.send("close now")
    await asyncio.wait_for(websocket.wait_closed(), TIMEOUT)
    after = await server.scrape_until(connection_ended(before, TEST_ROUTE))

    assert websocket.close_code == 4001
    assert after.delta(before, CLOSED, route=TEST_ROUTE, code="4xxx", initiator="server") == 1
    assert after.total_delta(before, CLOSED, route=TEST_ROUTE) == 1
    assert after.delta(before, ACTIVE, route=TEST_ROUTE) == 0
    assert after.delta(before, DURATION_COUNT, route=TEST_ROUTE) == 1
    assert after.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) == 0


async def test_server_close_without_code_counts_1000(server):
    before = await server.scrape()

    websocket = await server.connect("/ws/test/?action=server_close")
    await websocket.send("close now")
    await asyncio.wait_for(websocket.wait_closed(), TIMEOUT)
    after = await server.scrape_until(connection_ended(before, TEST_ROUTE))

    # Daphne 4.2 and uvicorn 0.55 send 1000 when websocket.close carries no code.
    assert websocket.close_code == 1000
    assert after.delta(before, CLOSED, route=TEST_ROUTE, code="1000", initiator="server") == 1
    assert after.total_delta(before, CLOSED, route=TEST_ROUTE) == 1
    assert after.delta(before, ACTIVE, route=TEST_ROUTE) == 0


async def test_client_close_without_code_counts_1005(server):
    before = await server.scrape()

    reader, writer = await server.send_upgrade_request("/ws/echo/")
    try:
        response_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert response_head.startswith(b"HTTP/1.1 101 "), response_head

        # A close frame with an empty payload: FIN + opcode 8, then the mask
        # bit with length 0 and the 4-byte mask that clients must send.
        writer.write(b"\x88\x80" + os.urandom(4))
        await asyncio.wait_for(writer.drain(), TIMEOUT)
        reply_head = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
        assert reply_head[0] == 0x88, reply_head
    finally:
        writer.close()
    after = await server.scrape_until(connection_ended(before, ECHO_ROUTE))

    assert after.delta(before, CLOSED, route=ECHO_ROUTE, code="1005", initiator="client") == 1
    assert after.total_delta(before, CLOSED, route=ECHO_ROUTE) == 1
    assert after.delta(before, ACTIVE, route=ECHO_ROUTE) == 0


async def test_client_abort_counts_client_once(server):
    before = await server.scrape()

    websocket = await server.connect("/ws/echo/")
    opened = await server.scrape_until(lambda m: m.delta(before, ACTIVE, route=ECHO_ROUTE) >= 1)
    assert opened.delta(before, ACTIVE, route=ECHO_ROUTE) == 1

    # Dropping the TCP connection sends no close frame, as when a client
    # process dies or its network goes away.
    websocket.transport.abort()
    after = await server.scrape_until(connection_ended(before, ECHO_ROUTE))

    code = ABORT_CLOSE_CODES[server.kind]
    assert after.delta(before, CLOSED, route=ECHO_ROUTE, code=code, initiator="client") == 1
    assert after.total_delta(before, CLOSED, route=ECHO_ROUTE) == 1
    assert after.delta(before, ACTIVE, route=ECHO_ROUTE) == 0
    assert after.delta(before, DURATION_COUNT, route=ECHO_ROUTE) == 1
    assert after.total_delta(before, EXCEPTIONS, route=ECHO_ROUTE) == 0


async def test_exception_after_accept_counts_1011(server):
    before = await server.scrape()

    websocket = await server.connect("/ws/test/?action=raise_after_accept")
    await websocket.send("raise now")
    # Daphne sends close code 1011; uvicorn drops the TCP connection. Either
    # way the client sees the connection end.
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(websocket.recv(), TIMEOUT)
    after = await server.scrape_until(connection_ended(before, TEST_ROUTE))

    assert after.delta(before, CLOSED, route=TEST_ROUTE, code="1011", initiator="server") == 1
    assert after.total_delta(before, CLOSED, route=TEST_ROUTE) == 1
    assert after.delta(before, EXCEPTIONS, route=TEST_ROUTE, exception_type="ValueError") == 1
    assert after.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) == 1
    assert after.delta(before, ACTIVE, route=TEST_ROUTE) == 0
    assert after.delta(before, DURATION_COUNT, route=TEST_ROUTE) == 1
    assert after.delta(before, HANDSHAKES, route=TEST_ROUTE, outcome="accepted") == 1
    assert after.delta(before, HANDSHAKES, route=TEST_ROUTE, outcome="error") == 0


async def test_whoami_reports_server_pid(server):
    # Both servers run the application in the process they were started as
    # (no --workers), so the reply names that process.
    websocket = await server.connect("/ws/test/?action=whoami")
    try:
        reply = await asyncio.wait_for(websocket.recv(), TIMEOUT)
    finally:
        await asyncio.wait_for(websocket.close(), TIMEOUT)

    assert reply == f"pid:{server.process.pid}"
