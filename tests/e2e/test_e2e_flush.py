"""Message counts of open connections under daphne and uvicorn, flushed by a scrape."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import SERVER_KINDS, Server

from .conftest import serve

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

TIMEOUT = 10.0

ECHO_ROUTE = "ws/echo/"
RECEIVED = "django_websocket_messages_received_total"
SENT = "django_websocket_messages_sent_total"
RECEIVED_BYTES = "django_websocket_received_bytes_total"
SENT_BYTES = "django_websocket_sent_bytes_total"
DURATION_COUNT = "django_websocket_connection_duration_seconds_count"


@pytest.fixture(scope="module", params=SERVER_KINDS)
def quiet_server(
    request: pytest.FixtureRequest,
    example_database: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """Start daphne or uvicorn whose flush thread never runs during the tests."""
    environment = {"DJANGO_SETTINGS_MODULE": "tests.e2e.no_timed_flush_settings"}
    with serve(request.param, example_database, tmp_path_factory, environment) as running:
        yield running


async def test_flush_scrape_counts_open_connection(quiet_server):
    before = await quiet_server.scrape()

    websocket = await quiet_server.connect("/ws/echo/")
    try:
        for text in ("one", "two", "three"):
            await websocket.send(text)
            assert await asyncio.wait_for(websocket.recv(), TIMEOUT) == text
        # One scrape and no polling: only the flush that the scrape itself
        # runs can have added these counts.
        during = await quiet_server.scrape()
    finally:
        await asyncio.wait_for(websocket.close(), TIMEOUT)
    after = await quiet_server.scrape_until(lambda m: m.delta(before, DURATION_COUNT, route=ECHO_ROUTE) >= 1)

    assert during.delta(before, RECEIVED, route=ECHO_ROUTE) == 3
    assert during.delta(before, SENT, route=ECHO_ROUTE) == 3
    assert during.delta(before, RECEIVED_BYTES, route=ECHO_ROUTE) == 11
    assert during.delta(before, SENT_BYTES, route=ECHO_ROUTE) == 11
    # The flush at the end of the connection adds nothing a second time.
    assert after.delta(before, RECEIVED, route=ECHO_ROUTE) == 3
    assert after.delta(before, SENT_BYTES, route=ECHO_ROUTE) == 11
