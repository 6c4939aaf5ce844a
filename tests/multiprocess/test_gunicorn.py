"""Gunicorn with uvicorn workers and the ``child_exit`` hook from docs/deployment.md."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import os
import signal

import pytest
from websockets.protocol import State

from tests.servers import multiprocess_environment

from .helpers import LEFTOVER_WARNING, open_whoami

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio,
    pytest.mark.skipif(
        importlib.util.find_spec("gunicorn") is None or importlib.util.find_spec("uvicorn_worker") is None,
        reason="needs the gunicorn and uvicorn-worker packages: pip install gunicorn uvicorn-worker",
    ),
]

TIMEOUT = 10.0
RECOVERY_TIMEOUT = 30.0

TEST_ROUTE = "ws/test/"
ACTIVE = "django_websocket_connections_active"
CONNECTIONS = "django_websocket_connections_total"

# The hook of docs/deployment.md, plus a log line that shows it ran.
GUNICORN_CONFIG = """\
from prometheus_client import multiprocess


def child_exit(server, worker):
    try:
        multiprocess.mark_process_dead(worker.pid)
    except FileNotFoundError:
        pass  # another worker's dead-worker sweep removed the file first
    server.log.info("child_exit: marked worker %s dead", worker.pid)
"""


async def test_gunicorn_kill_corrects_active(fleet, tmp_path):
    config_path = tmp_path / "gunicorn.conf.py"
    config_path.write_text(GUNICORN_CONFIG)
    directory = fleet.directory("multiproc")
    server = fleet.start(
        "gunicorn",
        ["--config", str(config_path), "--workers", "2"],
        multiprocess_environment(directory, sweep_interval=0),
    )
    first_workers = server.wait_for_workers(2)

    connections = await open_whoami(server, 10)
    try:
        opened = await server.scrape_until(lambda m: m.value(ACTIVE, route=TEST_ROUTE) >= 10)

        per_worker = collections.Counter(pid for _, pid in connections)
        victim, victim_connections = per_worker.most_common(1)[0]
        os.kill(victim, signal.SIGKILL)
        for websocket, pid in connections:
            if pid == victim:
                await asyncio.wait_for(websocket.wait_closed(), TIMEOUT)
        expected = sum(1 for websocket, _ in connections if websocket.state is State.OPEN)

        recovered = await server.scrape_until(
            lambda m: m.value(ACTIVE, route=TEST_ROUTE) == expected, timeout=RECOVERY_TIMEOUT
        )
    finally:
        for websocket, _ in connections:
            await asyncio.wait_for(websocket.close(), TIMEOUT)

    assert {pid for _, pid in connections} <= set(first_workers)
    assert [labels for (name, labels) in opened.samples if name == ACTIVE] == [
        frozenset({("route", TEST_ROUTE)})
    ]
    assert opened.value(ACTIVE, route=TEST_ROUTE) == 10
    assert expected == 10 - victim_connections
    assert recovered.value(ACTIVE, route=TEST_ROUTE) == expected
    assert recovered.value(CONNECTIONS, route=TEST_ROUTE) == 10
    assert f"child_exit: marked worker {victim} dead" in server.read_output()
    assert not (directory / f"gauge_livesum_{victim}.db").exists()
    assert LEFTOVER_WARNING not in server.read_output()
