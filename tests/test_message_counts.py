"""Message and byte counts kept per connection and added to the counters in batches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from channels.testing import WebsocketCommunicator
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from channels_ws_metrics import WebSocketMetricsMiddleware
from channels_ws_metrics.conf import WebSocketMetricsSettings
from channels_ws_metrics.metrics import MessageCounts, WebSocketMetrics, _after_fork_in_child

from .asgi_apps import router
from .conftest import NO_TIMED_FLUSH, Samples

ECHO = {"route": "ws/echo/"}
RECEIVED = "django_websocket_messages_received_total"
SENT = "django_websocket_messages_sent_total"
RECEIVED_BYTES = "django_websocket_received_bytes_total"
SENT_BYTES = "django_websocket_sent_bytes_total"

# How long a test waits for the flush thread before it gives up; the value
# it waits for is asserted exactly.
THREAD_WAIT_SECONDS = 10.0


def counter_value(metrics: WebSocketMetrics, family: str, route: str = "ws/echo/") -> float:
    """Read a counter child without collecting the registry, which would flush."""
    return getattr(metrics, family).labels(route)._value.get()


async def open_echo(metrics: WebSocketMetrics, *texts: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(WebSocketMetricsMiddleware(router(), metrics=metrics), "/ws/echo/")
    connected, _ = await communicator.connect()
    assert connected
    for text in texts:
        await communicator.send_to(text_data=text)
        assert await communicator.receive_from() == text
    return communicator


def test_message_counts_flush_adds_only_the_gain(metrics):
    counts = MessageCounts(metrics.for_route("ws/echo/"))
    failures = {}
    counts.received += 2
    counts.received_bytes += 10
    counts.flush(failures)
    counts.received += 1
    counts.sent += 4
    counts.sent_bytes += 7
    counts.flush(failures)
    counts.flush(failures)

    assert failures == {}
    assert counter_value(metrics, "messages_received_total") == 3
    assert counter_value(metrics, "received_bytes_total") == 10
    assert counter_value(metrics, "messages_sent_total") == 4
    assert counter_value(metrics, "sent_bytes_total") == 7


def test_message_counts_failed_update_not_retried(metrics):
    route_metrics = metrics.for_route("ws/echo/")
    broken = True
    real_inc = route_metrics.message_incs[0]

    def flaky_inc(amount):
        if broken:
            raise OSError("storage failed")
        real_inc(amount)

    route_metrics.message_incs = (flaky_inc, *route_metrics.message_incs[1:])
    counts = MessageCounts(route_metrics)
    counts.received += 3
    counts.received_bytes += 12
    failures = {}

    counts.flush(failures)
    broken = False
    counts.received += 1
    counts.flush(failures)

    assert list(failures) == ["message_received"]
    assert str(failures["message_received"]) == "storage failed"
    # The three of the failed update are not added again.
    assert counter_value(metrics, "messages_received_total") == 1
    assert counter_value(metrics, "received_bytes_total") == 12


def test_message_counts_update_applied_then_raised_counts_once(metrics):
    # prometheus_client's multiprocess value adds the amount in memory and
    # then writes the file, so a failed write has still counted.
    route_metrics = metrics.for_route("ws/echo/")
    real_inc = route_metrics.message_incs[0]
    calls = 0

    def write_fails_once(amount):
        nonlocal calls
        calls += 1
        real_inc(amount)
        if calls == 1:
            raise OSError("write failed")

    route_metrics.message_incs = (write_fails_once, *route_metrics.message_incs[1:])
    counts = MessageCounts(route_metrics)
    failures = {}
    counts.received += 3
    counts.flush(failures)
    counts.received += 1
    counts.flush(failures)

    assert list(failures) == ["message_received"]
    assert counter_value(metrics, "messages_received_total") == 4


def test_message_counts_report_each_operation_once(metrics):
    route_metrics = metrics.for_route("ws/echo/")

    def broken(amount):
        raise OSError("storage failed")

    route_metrics.message_incs = (broken,) * 4
    counts = MessageCounts(route_metrics)
    counts.received = counts.received_bytes = counts.sent = counts.sent_bytes = 1
    failures = {}

    counts.flush(failures)

    assert list(failures) == ["message_received", "message_sent"]


@pytest.mark.asyncio
async def test_message_counts_scrape_sees_open_connection(metrics, samples):
    communicator = await open_echo(metrics, "one", "two", "three")

    assert samples(RECEIVED, **ECHO) == 3
    assert samples(SENT, **ECHO) == 3
    assert samples(RECEIVED_BYTES, **ECHO) == 11
    assert samples(SENT_BYTES, **ECHO) == 11
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_message_counts_not_flushed_before_scrape_or_end(metrics):
    communicator = await open_echo(metrics, "one", "two")

    assert counter_value(metrics, "messages_received_total") == 0
    await communicator.disconnect()
    assert counter_value(metrics, "messages_received_total") == 2
    assert counter_value(metrics, "sent_bytes_total") == 6


@pytest.mark.asyncio
async def test_message_counts_end_of_connection_stops_tracking(metrics):
    communicator = await open_echo(metrics, "one")
    assert len(metrics._message_counts) == 1

    await communicator.disconnect()

    assert metrics._message_counts == set()


@pytest.mark.asyncio
async def test_message_counts_end_without_messages_stops_tracking(metrics):
    communicator = await open_echo(metrics)

    await communicator.disconnect()

    assert metrics._message_counts == set()
    assert counter_value(metrics, "messages_received_total") == 0


@pytest.mark.asyncio
async def test_message_counts_failing_storage_reported_once_per_flush(metrics, samples):
    route_metrics = metrics.for_route("ws/echo/")
    working = route_metrics.message_incs
    communicators = [await open_echo(metrics, "abc") for _ in range(5)]

    def broken(amount):
        raise OSError("storage failed")

    route_metrics.message_incs = (broken,) * 4
    metrics.flush_messages()
    route_metrics.message_incs = working

    assert metrics.pending_errors == {}
    assert samples("django_websocket_metric_errors_total", operation="message_received") == 1
    assert samples("django_websocket_metric_errors_total", operation="message_sent") == 1
    for communicator in communicators:
        await communicator.disconnect()


def test_message_counts_off_without_message_metrics():
    metrics = WebSocketMetrics(CollectorRegistry(), WebSocketMetricsSettings(message_metrics=False))

    assert metrics.open_message_counts(metrics.for_route("ws/echo/")) is None
    assert metrics._flusher is None


def test_message_counts_flush_in_another_thread_loses_nothing(metrics):
    counts = metrics.open_message_counts(metrics.for_route("ws/echo/"))
    done = threading.Event()
    flushes = 0

    def flush_until_done():
        nonlocal flushes
        while not done.is_set():
            metrics.flush_messages()
            flushes += 1

    flusher = threading.Thread(target=flush_until_done)
    flusher.start()
    try:
        for _ in range(200_000):
            counts.received += 1
            counts.received_bytes += 3
    finally:
        done.set()
        flusher.join(timeout=THREAD_WAIT_SECONDS)
    metrics.close_message_counts(counts)

    assert not flusher.is_alive()
    assert flushes > 0
    assert counter_value(metrics, "messages_received_total") == 200_000
    assert counter_value(metrics, "received_bytes_total") == 600_000


def wait_for_value(metrics: WebSocketMetrics, family: str, expected: float) -> float:
    """Poll a counter until it shows ``expected`` or the wait runs out; return what it shows."""
    deadline = time.monotonic() + THREAD_WAIT_SECONDS
    while (value := counter_value(metrics, family)) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


@pytest.mark.asyncio
async def test_message_counts_thread_flushes_open_connection():
    metrics = WebSocketMetrics(CollectorRegistry(), WebSocketMetricsSettings(message_flush_interval=0.05))
    communicator = await open_echo(metrics, "one", "two")

    assert wait_for_value(metrics, "messages_sent_total", 2) == 2
    assert metrics._flusher.name == "channels_ws_metrics-flusher"
    assert metrics._flusher.daemon
    await communicator.disconnect()
    metrics.unregister()


@pytest.mark.asyncio
async def test_message_counts_thread_restarts_after_fork(metrics):
    first = await open_echo(metrics)
    inherited = metrics._flusher

    # What a forked child runs: it has the attribute but not the thread.
    _after_fork_in_child()
    second = await open_echo(metrics)

    assert inherited is not None
    assert metrics._flusher is not inherited
    assert metrics._flusher.is_alive()
    await first.disconnect()
    await second.disconnect()
    metrics.unregister()
    inherited.stop()


@pytest.mark.asyncio
async def test_message_counts_fork_drops_parent_connections(metrics):
    parent_connection = await open_echo(metrics, "one")
    metrics._flush_lock.acquire()

    # In a forked child the parent's connections are not its own, and the
    # lock may have been held by the parent's flush thread.
    _after_fork_in_child()
    metrics.flush_messages()

    assert metrics._message_counts == set()
    assert counter_value(metrics, "messages_received_total") == 0
    await parent_connection.disconnect()
    metrics.unregister()


@pytest.mark.asyncio
async def test_message_counts_thread_not_restarted_after_unregister(metrics):
    first = await open_echo(metrics)
    metrics.unregister()
    stopped = metrics._flusher
    stopped.join(timeout=THREAD_WAIT_SECONDS)

    second = await open_echo(metrics)

    assert metrics._flusher is stopped
    assert not stopped.is_alive()
    await first.disconnect()
    await second.disconnect()


def test_message_counts_thread_interval_capped():
    metrics = WebSocketMetrics(CollectorRegistry(), WebSocketMetricsSettings(message_flush_interval=1e12))

    metrics._start_flusher()

    assert metrics._flusher.interval == threading.TIMEOUT_MAX
    assert metrics._flusher.is_alive()
    metrics.unregister()


@pytest.mark.asyncio
async def test_message_counts_unregister_stops_thread():
    metrics = WebSocketMetrics(CollectorRegistry(), WebSocketMetricsSettings(message_flush_interval=0.05))
    communicator = await open_echo(metrics)
    await communicator.disconnect()

    metrics.unregister()
    metrics._flusher.join(timeout=THREAD_WAIT_SECONDS)

    assert not metrics._flusher.is_alive()


def test_message_counts_unregister_removes_scrape_hook():
    registry = CollectorRegistry()
    metrics = WebSocketMetrics(registry, NO_TIMED_FLUSH)

    metrics.unregister()

    assert list(registry.collect()) == []
    assert registry._collector_to_names == {}


def test_message_counts_scrape_hook_comes_first():
    registry = CollectorRegistry()
    metrics = WebSocketMetrics(registry, NO_TIMED_FLUSH)

    assert type(next(iter(registry._collector_to_names))).__name__ == "_FlushOnCollect"
    assert Samples(registry)(RECEIVED, **ECHO) == 0
    metrics.unregister()


# A worker that exits while a connection is open and its coroutine never
# finishes, as when a server stops its event loop without cancelling the
# applications: only the flush at interpreter exit saves the counts.
EXIT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import django
    django.setup()
    from channels_ws_metrics.conf import WebSocketMetricsSettings
    from channels_ws_metrics.metrics import WebSocketMetrics

    metrics = WebSocketMetrics(None, WebSocketMetricsSettings(message_flush_interval=3600.0))
    counts = metrics.open_message_counts(metrics.for_route("ws/echo/"))
    counts.received += 3
    counts.sent_bytes += 11
    if sys.argv[1] == "kill":
        os._exit(0)
    sys.exit(0)
    """
)


@pytest.mark.parametrize(("how", "messages", "payload_bytes"), [("exit", 3, 11), ("kill", 0, 0)])
def test_message_counts_flushed_at_interpreter_exit(tmp_path, how, messages, payload_bytes):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    environment = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
    }
    completed = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, how],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))

    assert Samples(registry)(RECEIVED, **ECHO) == messages
    assert Samples(registry)(SENT_BYTES, **ECHO) == payload_bytes
