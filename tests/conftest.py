from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from channels_ws_metrics.conf import WebSocketMetricsSettings
from channels_ws_metrics.metrics import WebSocketMetrics

# Longer than any test, so that the background flush of message counts
# never runs during one. Every flush in a test then comes from the test
# itself: a scrape or the end of a connection.
NO_TIMED_FLUSH = WebSocketMetricsSettings(message_flush_interval=3600.0)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Iterator[WebSocketMetrics]:
    built = WebSocketMetrics(registry, NO_TIMED_FLUSH)
    yield built
    # Ends the flush thread, which would otherwise wait out its interval.
    built.unregister()


class Samples:
    """Read sample values of one registry, with 0.0 for absent series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def __call__(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def samples(registry: CollectorRegistry) -> Samples:
    return Samples(registry)


class Exposition:
    """One scrape of the real /metrics view, parsed."""

    def __init__(self, text: str) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name.removesuffix("_total")] = family.type
            for sample in family.samples:
                self.values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """Return a sample's value, 0.0 when the series is absent."""
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample, labels in self.values if sample == name]


@pytest.fixture
def scrape(client):
    def get() -> Exposition:
        response = client.get("/metrics")
        assert response.status_code == 200
        return Exposition(response.content.decode())

    return get
