from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from channels_ws_metrics.metrics import WebSocketMetrics


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> WebSocketMetrics:
    return WebSocketMetrics(registry)


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
