"""Helpers that several multiprocess test modules share."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest
from websockets.asyncio.client import ClientConnection

from tests.servers import NETWORK_TIMEOUT, Server

#: A phrase of the warning about files left by an earlier run, which a
#: normal start must not log.
LEFTOVER_WARNING = "include values from an earlier run"


async def open_whoami(server: Server, count: int) -> list[tuple[ClientConnection, int]]:
    """Open ``count`` connections to ``ws/test/?action=whoami`` and return each with its worker's pid."""
    connections = []
    for _ in range(count):
        websocket = await server.connect("/ws/test/?action=whoami")
        greeting = await asyncio.wait_for(websocket.recv(), NETWORK_TIMEOUT)
        connections.append((websocket, int(greeting.removeprefix("pid:"))))
    return connections


def require_tool(name: str) -> str:
    """Return the path of a command-line tool, skipping the test outside CI when it is missing.

    CI installs the Debian package ``prometheus`` (``.ci/run``), so a missing
    tool there fails the test instead of hiding it behind a skip.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    message = (
        f"{name} was not found on PATH. Install it with "
        "'apt-get install --no-install-recommends prometheus' (Debian package 'prometheus')."
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message + " CI must run this test, so .ci/run installs the package.")
    pytest.skip(message)
