"""The package's metric families under prometheus_client's multiprocess mode.

prometheus_client picks its value class when it is imported, so these tests
switch ``prometheus_client.values.ValueClass`` to a multiprocess one whose
process id is given, the way prometheus_client's own tests do. Each
simulated worker writes its own files into a temporary directory, and
``MultiProcessCollector`` merges them as django-prometheus's export view does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from channels.testing import WebsocketCommunicator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

from channels_ws_metrics import WebSocketMetricsMiddleware
from channels_ws_metrics.conf import WebSocketMetricsSettings
from channels_ws_metrics.metrics import WebSocketMetrics
from channels_ws_metrics.multiprocess import DIRECTORY_ENV, remove_dead_live_gauges

from ..asgi_apps import router

ECHO = {"route": "ws/echo/"}
ACTIVE = "django_websocket_connections_active"
CONNECTIONS = "django_websocket_connections_total"
RECEIVED = "django_websocket_messages_received_total"
DURATION_COUNT = "django_websocket_connection_duration_seconds_count"
HANDSHAKE_COUNT = "django_websocket_handshake_duration_seconds_count"
CLOSED = "django_websocket_connections_closed_total"


# Every optional family switched on, so every family is checked. The
# simulated workers flush their message counts when a test calls
# flush_messages(), as the flush thread of a real worker does every
# MESSAGE_FLUSH_INTERVAL.
ALL_FAMILIES = WebSocketMetricsSettings(
    message_metrics=True, message_size_histogram=True, message_flush_interval=3600.0
)


def build_metrics(registry: CollectorRegistry | None = None) -> WebSocketMetrics:
    return WebSocketMetrics(registry, ALL_FAMILIES)


class Workers:
    """Simulated worker processes that share one multiprocess directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._value_classes: dict[int, type] = {}

    @contextlib.contextmanager
    def running_as(self, pid: int) -> Iterator[None]:
        """Create metric values inside this block as the process ``pid`` would."""
        if pid not in self._value_classes:
            self._value_classes[pid] = values.MultiProcessValue(lambda: pid)
        previous = values.ValueClass
        values.ValueClass = self._value_classes[pid]
        try:
            yield
        finally:
            values.ValueClass = previous

    def collect(self) -> Samples:
        """Merge every file of the directory, as the /metrics view does in multiprocess mode."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))
        return Samples(registry)

    def close(self) -> None:
        for value_class in self._value_classes.values():
            value_class.close_all_files()


@pytest.fixture
def workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workers]:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    monkeypatch.setenv(DIRECTORY_ENV, str(directory))
    simulated = Workers(directory)
    try:
        yield simulated
    finally:
        simulated.close()


class Samples:
    """The samples of this package's families in one collection of a registry.

    A registry collects again on every read, so tests that change the files
    between two reads keep what was read first here.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.series: dict[tuple[str, frozenset[tuple[str, str]]], float] = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name.startswith("django_websocket_")
        }

    def __call__(self, name: str, **labels: str) -> float:
        return self.series.get((name, frozenset(labels.items())), 0.0)

    def label_sets(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample_name, labels in self.series if sample_name == name]


async def open_echo(metrics: WebSocketMetrics, messages: int) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(WebSocketMetricsMiddleware(router(), metrics=metrics), "/ws/echo/")
    connected, _ = await communicator.connect()
    assert connected
    for number in range(messages):
        await communicator.send_to(text_data=f"message {number}")
        assert await communicator.receive_from() == f"message {number}"
    return communicator


async def run_traffic(metrics: WebSocketMetrics) -> None:
    """Exercise every family: accepted, closed and failing connections and a rejection."""
    communicator = await open_echo(metrics, messages=2)
    await communicator.disconnect(code=4001)

    middleware = WebSocketMetricsMiddleware(router(), metrics=metrics)
    rejected = WebsocketCommunicator(middleware, "/ws/reject/")
    connected, _ = await rejected.connect()
    assert not connected

    failing = WebsocketCommunicator(middleware, "/ws/raise-after/")
    connected, _ = await failing.connect()
    assert connected
    await failing.send_to(text_data="boom")
    with pytest.raises(ValueError):
        await failing.wait()


def test_families_use_only_multiprocess_capable_types():
    metrics = build_metrics(CollectorRegistry())

    assert metrics.message_size is not None
    for collector in metrics.collectors:
        assert type(collector) in (Counter, Gauge, Histogram), collector


def test_active_gauge_is_livesum():
    metrics = build_metrics(CollectorRegistry())

    assert metrics.connections_active._multiprocess_mode == "livesum"


@pytest.mark.asyncio
async def test_multiprocess_export_matches_single_process(workers):
    single_registry = CollectorRegistry()
    await run_traffic(build_metrics(single_registry))
    with workers.running_as(os.getpid()):
        await run_traffic(build_metrics())

    # Multiprocess mode exports no _created samples.
    single = {key: v for key, v in Samples(single_registry).series.items() if not key[0].endswith("_created")}
    multi = workers.collect().series
    families = {name.removesuffix("_total") for name, _ in multi}
    assert "django_websocket_message_size_bytes_count" in families
    assert "django_websocket_exceptions" in families
    assert set(multi) == set(single)
    for (name, labels), single_value in single.items():
        if "_bucket" in name or name.endswith("_sum"):
            continue  # timings differ between the two runs
        assert multi[(name, labels)] == single_value, (name, dict(labels))


@pytest.mark.asyncio
async def test_multiprocess_sums_workers(workers, dead_pid):
    open_connections = []
    with workers.running_as(os.getpid()):
        metrics_a = build_metrics()
        open_connections.append(await open_echo(metrics_a, messages=1))
        closed = await open_echo(metrics_a, messages=2)
        await closed.disconnect()
    with workers.running_as(dead_pid):
        metrics_b = build_metrics()
        for _ in range(3):
            open_connections.append(await open_echo(metrics_b, messages=3))
    metrics_a.flush_messages()
    metrics_b.flush_messages()
    try:
        merged = workers.collect()
    finally:
        with workers.running_as(os.getpid()):
            for communicator in open_connections:
                await communicator.disconnect()

    assert merged.label_sets(ACTIVE) == [ECHO]
    assert merged(ACTIVE, **ECHO) == 4
    assert merged(CONNECTIONS, **ECHO) == 5
    assert merged(RECEIVED, **ECHO) == 1 + 2 + 3 * 3
    assert merged(HANDSHAKE_COUNT, outcome="accepted", **ECHO) == 5
    assert merged(DURATION_COUNT, **ECHO) == 1


@pytest.mark.asyncio
async def test_sweep_keeps_dead_worker_counters(workers, dead_pid):
    open_connections = []
    with workers.running_as(os.getpid()):
        metrics_a = build_metrics()
        open_connections.append(await open_echo(metrics_a, messages=1))
    with workers.running_as(dead_pid):
        metrics_b = build_metrics()
        for _ in range(2):
            open_connections.append(await open_echo(metrics_b, messages=2))
    metrics_a.flush_messages()
    metrics_b.flush_messages()
    try:
        before = workers.collect()
        removed = remove_dead_live_gauges(str(workers.directory))
        after = workers.collect()
    finally:
        with workers.running_as(os.getpid()):
            for communicator in open_connections:
                await communicator.disconnect()

    assert [os.path.basename(path) for path in removed] == [f"gauge_livesum_{dead_pid}.db"]
    assert before(ACTIVE, **ECHO) == 3
    assert after(ACTIVE, **ECHO) == 1
    assert after(CONNECTIONS, **ECHO) == 3
    assert after(RECEIVED, **ECHO) == 1 + 2 * 2
    assert after(HANDSHAKE_COUNT, outcome="accepted", **ECHO) == 3
