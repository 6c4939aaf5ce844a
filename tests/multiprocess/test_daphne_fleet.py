"""Two daphne processes sharing one multiprocess directory, one of them killed for good."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.servers import multiprocess_environment

from .helpers import LEFTOVER_WARNING

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

TIMEOUT = 10.0
SWEEP_INTERVAL = 1.0
# Time allowed beyond the sweep interval for the sweep itself and for the
# scrape that reads its result, on a loaded two-core CI machine.
SWEEP_SLACK = 2.0

ECHO_ROUTE = "ws/echo/"
TEST_ROUTE = "ws/test/"
ACTIVE = "django_websocket_connections_active"
CONNECTIONS = "django_websocket_connections_total"
RECEIVED = "django_websocket_messages_received_total"


async def send_and_receive(websocket, count: int) -> None:
    for number in range(count):
        await websocket.send(f"message {number}")
        assert await asyncio.wait_for(websocket.recv(), TIMEOUT) == f"message {number}"


async def test_daphne_fleet_periodic_sweep_after_kill(fleet):
    directory = fleet.directory("multiproc")
    environment = multiprocess_environment(directory, sweep_interval=SWEEP_INTERVAL)
    survivor = fleet.start("daphne", environment=environment)
    victim = fleet.start("daphne", environment=environment)

    connections = []
    try:
        for _ in range(6):
            connections.append(await survivor.connect("/ws/echo/"))
        for _ in range(4):
            connections.append(await victim.connect("/ws/echo/"))
        whoami = await victim.connect("/ws/test/?action=whoami")
        connections.append(whoami)
        greeting = await asyncio.wait_for(whoami.recv(), TIMEOUT)
        for websocket in connections[:10]:
            await send_and_receive(websocket, 2)

        # Each worker adds its message counts to the shared files within
        # MESSAGE_FLUSH_INTERVAL (one second), so the messages may show up
        # a little after the connections.
        def all_open(m):
            return (
                m.value(ACTIVE, route=ECHO_ROUTE) >= 10
                and m.value(ACTIVE, route=TEST_ROUTE) >= 1
                and m.value(RECEIVED, route=ECHO_ROUTE) >= 20
            )

        from_survivor = await survivor.scrape_until(all_open)
        from_victim = await victim.scrape_until(all_open)

        victim.process.send_signal(signal.SIGKILL)
        # Reaped at once: an unreaped child would stay a zombie, which the
        # sweep treats as dead only where /proc shows it.
        victim.process.wait(timeout=TIMEOUT)
        killed_at = time.monotonic()
        swept = await survivor.scrape_until(
            lambda m: m.value(ACTIVE, route=ECHO_ROUTE) <= 6 and m.value(ACTIVE, route=TEST_ROUTE) == 0,
            timeout=SWEEP_INTERVAL + SWEEP_SLACK + TIMEOUT,
        )
        elapsed = time.monotonic() - killed_at
    finally:
        for websocket in connections:
            await asyncio.wait_for(websocket.close(), TIMEOUT)

    assert greeting == f"pid:{victim.process.pid}"
    for snapshot in (from_survivor, from_victim):
        assert snapshot.value(ACTIVE, route=ECHO_ROUTE) == 10
        assert snapshot.value(ACTIVE, route=TEST_ROUTE) == 1
        assert snapshot.value(RECEIVED, route=ECHO_ROUTE) == 20
    assert swept.value(ACTIVE, route=ECHO_ROUTE) == 6
    assert swept.value(ACTIVE, route=TEST_ROUTE) == 0
    assert elapsed <= SWEEP_INTERVAL + SWEEP_SLACK
    assert swept.value(CONNECTIONS, route=ECHO_ROUTE) == 10
    assert swept.value(CONNECTIONS, route=TEST_ROUTE) == 1
    assert swept.value(RECEIVED, route=ECHO_ROUTE) == 20
    assert not (directory / f"gauge_livesum_{victim.process.pid}.db").exists()
    assert (directory / f"counter_{victim.process.pid}.db").exists()
    assert LEFTOVER_WARNING not in survivor.read_output()
    assert LEFTOVER_WARNING not in victim.read_output()
