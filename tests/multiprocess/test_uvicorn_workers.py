"""``uvicorn --workers 2`` in multiprocess mode, with one worker killed by SIGKILL."""

from __future__ import annotations

import asyncio
import collections
import os
import signal

import pytest
from websockets.protocol import State

from tests.servers import multiprocess_environment

from .helpers import LEFTOVER_WARNING, open_whoami

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

TIMEOUT = 10.0
# Bounds the wait for uvicorn's supervisor, which checks its workers every
# 0.5 s (uvicorn 0.55), and for the replacement worker to load Django.
RECOVERY_TIMEOUT = 30.0

TEST_ROUTE = "ws/test/"
ACTIVE = "django_websocket_connections_active"
CONNECTIONS = "django_websocket_connections_total"
CLOSED = "django_websocket_connections_closed_total"


async def test_uvicorn_workers_kill_corrects_active(fleet):
    directory = fleet.directory("multiproc")
    # The periodic sweep is off, so only the replacement worker's start-up
    # sweep can remove the killed worker's live gauge.
    server = fleet.start("uvicorn", ["--workers", "2"], multiprocess_environment(directory, sweep_interval=0))
    first_workers = server.wait_for_workers(2)

    connections = await open_whoami(server, 20)
    try:
        opened = await server.scrape_until(lambda m: m.value(ACTIVE, route=TEST_ROUTE) >= 20)

        active_series = [labels for (name, labels) in opened.samples if name == ACTIVE]
        assert active_series == [frozenset({("route", TEST_ROUTE)})]
        assert opened.value(ACTIVE, route=TEST_ROUTE) == 20
        assert opened.value(CONNECTIONS, route=TEST_ROUTE) == 20
        assert {pid for _, pid in connections} <= set(first_workers)

        for websocket, _ in connections[:5]:
            await asyncio.wait_for(websocket.close(), TIMEOUT)
        still_open = connections[5:]
        after_close = await server.scrape_until(lambda m: m.value(ACTIVE, route=TEST_ROUTE) <= 15)
        assert after_close.value(ACTIVE, route=TEST_ROUTE) == 15

        per_worker = collections.Counter(pid for _, pid in still_open)
        victim, victim_connections = per_worker.most_common(1)[0]
        os.kill(victim, signal.SIGKILL)
        for websocket, pid in still_open:
            if pid == victim:
                await asyncio.wait_for(websocket.wait_closed(), TIMEOUT)
        expected = sum(1 for websocket, _ in still_open if websocket.state is State.OPEN)

        recovered = await server.scrape_until(
            lambda m: m.value(ACTIVE, route=TEST_ROUTE) == expected, timeout=RECOVERY_TIMEOUT
        )
    finally:
        for websocket, _ in connections:
            await asyncio.wait_for(websocket.close(), TIMEOUT)

    replacements = [pid for pid in server.started_worker_pids() if pid not in first_workers]
    assert victim_connections >= 1
    assert expected == 15 - victim_connections
    assert len(replacements) == 1
    assert recovered.value(ACTIVE, route=TEST_ROUTE) == expected
    # The killed worker's counters stay, so totals do not drop.
    assert recovered.value(CONNECTIONS, route=TEST_ROUTE) == 20
    # Its connections died with it and were never recorded as closed.
    assert recovered.total(CLOSED, route=TEST_ROUTE) == 5
    assert not (directory / f"gauge_livesum_{victim}.db").exists()
    assert (directory / f"counter_{victim}.db").exists()
    assert LEFTOVER_WARNING not in server.read_output()
