"""Consumers that outlive their connection.

daphne cancels an application that is still running
``--application-close-timeout`` seconds after its client left. uvicorn
0.55 has no such timeout: the application runs until it returns. Either
way the connection must be counted once, and leave the open-connection
gauge when the application ends. daphne's ``--websocket_connect_timeout``
likewise drops a client whose handshake the application has not decided
in time, while the consumer goes on in ``connect()``.

uvicorn's ``--timeout-graceful-shutdown`` does cancel applications, but
only at shutdown, and uvicorn 0.55 then ends the process by raising the
signal again without waiting for the cancelled tasks to finish. The
middleware's cleanup then may or may not run, so no test here relies on
it.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import InvalidMessage

from tests.servers import ServerGroup
from tests.storm.clients import ACTIVE, CLOSED, CONNECTIONS, DURATION_COUNT, EXCEPTIONS, HANDSHAKES, TEST_ROUTE

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

TIMEOUT = 10.0

# daphne checks for applications to cancel once a second, so a 1 s close
# timeout cancels 1 s to 2 s after the client left.
CLOSE_TIMEOUT_OPTIONS = ["--application-close-timeout", "1"]
CANCEL_WAIT = 15.0

# Logged by daphne 4.2.3 when it cancels an application after the close timeout.
DAPHNE_CANCEL_MESSAGE = "took too long to shut down and was killed"

# daphne's consumers sleep this long, longer than any wait here, so only
# a cancellation ends them within the test.
LINGER = "30"

# uvicorn's consumers sleep this long, then end by themselves. The scrape
# taken just after the client's close falls well inside it.
UVICORN_LINGER = "5"


def connection_ended(before):
    return lambda after: (
        after.total(ACTIVE) == 0 and after.total_delta(before, CLOSED, route=TEST_ROUTE) >= 1
    )


@pytest.mark.parametrize(("leave", "code"), [("close", "1000"), ("abort", "1006")])
async def test_close_timeout_cancels_ignoring_consumer(servers: ServerGroup, leave: str, code: str) -> None:
    server = servers.start("daphne", CLOSE_TIMEOUT_OPTIONS)
    before = await server.scrape()

    websocket = await server.connect(f"/ws/test/?action=ignore_disconnect&delay={LINGER}")
    await websocket.send("echo me")
    assert await asyncio.wait_for(websocket.recv(), TIMEOUT) == "echo me"
    if leave == "close":
        await asyncio.wait_for(websocket.close(), TIMEOUT)
    else:
        websocket.transport.abort()
    after = await server.scrape_until(connection_ended(before), timeout=CANCEL_WAIT)

    # The consumer read the disconnect before it started sleeping, so the
    # client's close is on record when daphne cancels it.
    assert after.delta(before, CLOSED, route=TEST_ROUTE, code=code, initiator="client") == 1
    assert after.total_delta(before, CLOSED, route=TEST_ROUTE) == 1
    assert after.delta(before, CONNECTIONS, route=TEST_ROUTE) == 1
    assert after.delta(before, DURATION_COUNT, route=TEST_ROUTE) == 1
    assert after.total(ACTIVE) == 0
    assert after.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) == 0
    assert server.read_output().count(DAPHNE_CANCEL_MESSAGE) == 1


async def test_close_timeout_cancels_blocked_consumer(servers: ServerGroup) -> None:
    server = servers.start("daphne", CLOSE_TIMEOUT_OPTIONS)
    before = await server.scrape()

    websocket = await server.connect(f"/ws/test/?action=block&delay={LINGER}")
    await websocket.send("block now")
    # Autobahn replies to the close frame itself, so the client's close
    # completes while the consumer is still blocked.
    await asyncio.wait_for(websocket.close(), TIMEOUT)
    after = await server.scrape_until(connection_ended(before), timeout=CANCEL_WAIT)

    # NOTE: the consumer never read the websocket.disconnect that daphne
    # queued, so the middleware saw no close from either side before the
    # cancellation and records 1006/server, although the client closed
    # first with 1000. uvicorn records 1000/client for the same client
    # when the consumer ends by itself (see the uvicorn test below).
    assert after.delta(before, CLOSED, route=TEST_ROUTE, code="1006", initiator="server") == 1
    assert after.total_delta(before, CLOSED, route=TEST_ROUTE) == 1
    assert after.delta(before, CONNECTIONS, route=TEST_ROUTE) == 1
    assert after.delta(before, DURATION_COUNT, route=TEST_ROUTE) == 1
    assert after.total(ACTIVE) == 0
    assert after.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) == 0
    assert server.read_output().count(DAPHNE_CANCEL_MESSAGE) == 1


async def test_connect_timeout_counts_late_accept(servers: ServerGroup) -> None:
    # daphne checks handshake timeouts every 2 s, so with a 1 s timeout it
    # drops the connection 1 s to 3 s after the request, before the
    # consumer accepts at 5 s.
    server = servers.start("daphne", ["--websocket_connect_timeout", "1"])
    before = await server.scrape()

    with pytest.raises(InvalidMessage):
        await server.connect("/ws/test/?action=slow&delay=5")
    after = await server.scrape_until(connection_ended(before), timeout=CANCEL_WAIT)

    # NOTE: daphne takes the consumer's late accept without an error, so a
    # handshake that daphne gave up on counts as accepted, then closed by
    # the client with the code daphne reports for a dropped connection.
    assert after.delta(before, HANDSHAKES, route=TEST_ROUTE, outcome="accepted") == 1
    assert after.delta(before, HANDSHAKES, route=TEST_ROUTE, outcome="abandoned") == 0
    assert after.delta(before, CLOSED, route=TEST_ROUTE, code="1006", initiator="client") == 1
    assert after.total_delta(before, CLOSED, route=TEST_ROUTE) == 1
    assert after.total(ACTIVE) == 0
    assert after.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) == 0


@pytest.mark.parametrize("action", ["ignore_disconnect", "block"])
async def test_uvicorn_runs_consumer_to_its_end(servers: ServerGroup, action: str) -> None:
    server = servers.start("uvicorn")
    before = await server.scrape()

    websocket = await server.connect(f"/ws/test/?action={action}&delay={UVICORN_LINGER}")
    await websocket.send("first frame")
    if action == "ignore_disconnect":
        assert await asyncio.wait_for(websocket.recv(), TIMEOUT) == "first frame"
    await asyncio.wait_for(websocket.close(), TIMEOUT)

    # The connection is gone, yet the consumer sleeps on and stays counted
    # as open: uvicorn has no timeout that would cancel it.
    during = await server.scrape()
    assert during.value(ACTIVE, route=TEST_ROUTE) == 1
    assert during.total_delta(before, CLOSED, route=TEST_ROUTE) == 0

    after = await server.scrape_until(connection_ended(before), timeout=CANCEL_WAIT)

    # Both consumers read the client's close once their sleep ends: the
    # ignoring one before it, the blocked one after it.
    assert after.delta(before, CLOSED, route=TEST_ROUTE, code="1000", initiator="client") == 1
    assert after.total_delta(before, CLOSED, route=TEST_ROUTE) == 1
    assert after.delta(before, CONNECTIONS, route=TEST_ROUTE) == 1
    assert after.delta(before, DURATION_COUNT, route=TEST_ROUTE) == 1
    assert after.delta(before, HANDSHAKES, route=TEST_ROUTE, outcome="accepted") == 1
    assert after.total(ACTIVE) == 0
    assert after.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) == 0
