import pytest
from channels.testing import WebsocketCommunicator
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from channels_ws_metrics import WebSocketMetricsMiddleware
from channels_ws_metrics.conf import WebSocketMetricsSettings, get_settings
from channels_ws_metrics.metrics import WebSocketMetrics, fast_inc, fast_observe, get_metrics

from .asgi_apps import router

FAMILIES = {
    "django_websocket_connections_active": "gauge",
    "django_websocket_connections": "counter",
    "django_websocket_connection_duration_seconds": "histogram",
    "django_websocket_handshakes": "counter",
    "django_websocket_handshake_duration_seconds": "histogram",
    "django_websocket_connections_closed": "counter",
    "django_websocket_messages_received": "counter",
    "django_websocket_messages_sent": "counter",
    "django_websocket_received_bytes": "counter",
    "django_websocket_sent_bytes": "counter",
    "django_websocket_exceptions": "counter",
    "django_websocket_metric_errors": "counter",
}


def test_websocket_metrics_families_and_types():
    metrics = WebSocketMetrics(CollectorRegistry())

    assert {family.name: family.type for family in metrics.registry.collect()} == FAMILIES


def test_websocket_metrics_namespace_prefixes_every_family():
    metrics = WebSocketMetrics(CollectorRegistry(), WebSocketMetricsSettings(namespace="shop"))

    assert {family.name for family in metrics.registry.collect()} == {f"shop_{name}" for name in FAMILIES}


def test_websocket_metrics_route_children_are_cached():
    metrics = WebSocketMetrics(CollectorRegistry())

    assert metrics.for_route("a/") is metrics.for_route("a/")
    metrics.for_route("a/").count_closed("1000", "client")
    metrics.for_route("a/").count_closed("1000", "client")

    assert len(metrics.for_route("a/")._closed) == 1
    assert metrics.registry.get_sample_value(
        "django_websocket_connections_closed_total", {"route": "a/", "code": "1000", "initiator": "client"}
    ) == 2.0


def test_websocket_metrics_buckets_apply():
    registry = CollectorRegistry()
    metrics = WebSocketMetrics(
        registry, WebSocketMetricsSettings(connection_duration_buckets=(1, 10), handshake_duration_buckets=(0.5,))
    )
    metrics.for_route("r/").observe_duration(5)
    metrics.for_route("r/").observe_handshake["accepted"](0.1)

    assert registry.get_sample_value("django_websocket_connection_duration_seconds_bucket", {"route": "r/", "le": "1.0"}) == 0.0
    assert registry.get_sample_value("django_websocket_connection_duration_seconds_bucket", {"route": "r/", "le": "10.0"}) == 1.0
    assert registry.get_sample_value("django_websocket_connection_duration_seconds_bucket", {"route": "r/", "le": "+Inf"}) == 1.0
    assert registry.get_sample_value(
        "django_websocket_handshake_duration_seconds_bucket", {"route": "r/", "outcome": "accepted", "le": "0.5"}
    ) == 1.0


def test_get_metrics_returns_one_set_per_process():
    first = get_metrics()

    WebSocketMetricsMiddleware(router())
    WebSocketMetricsMiddleware(router())

    assert get_metrics() is first
    assert first.registry is REGISTRY


def test_get_metrics_rebuilds_when_settings_change(settings):
    before = get_metrics()
    settings.CHANNELS_WS_METRICS = {"NAMESPACE": "shop"}

    after = get_metrics()

    assert after is not before
    assert after.settings.namespace == "shop"
    assert get_settings().namespace == "shop"
    names = {family.name for family in REGISTRY.collect()}
    assert "shop_django_websocket_connections_active" in names
    assert "django_websocket_connections_active" not in names


def test_get_metrics_follows_prometheus_metric_namespace(settings):
    settings.PROMETHEUS_METRIC_NAMESPACE = "site"

    assert get_metrics().settings.namespace == "site"


def test_metrics_view_exports_families(scrape):
    types = scrape().types

    for name, kind in FAMILIES.items():
        assert types[name] == kind


@pytest.mark.asyncio
async def test_metrics_view_shows_connection(scrape):
    route = {"route": "ws/echo/"}
    before = scrape()

    communicator = WebsocketCommunicator(WebSocketMetricsMiddleware(router()), "/ws/echo/?x=1")
    await communicator.connect()
    during = scrape()
    await communicator.disconnect()
    after = scrape()

    assert during("django_websocket_connections_active", **route) == 1.0
    assert after("django_websocket_connections_active", **route) == 0.0
    total = "django_websocket_connections_total"
    assert after(total, **route) - before(total, **route) == 1.0


def test_fast_inc_updates_the_exported_value():
    registry = CollectorRegistry()
    counter = WebSocketMetrics(registry).connections_total.labels("r/")

    inc = fast_inc(counter)
    inc(1)
    inc(2)

    # Fails if prometheus_client stops storing the value as ``_value``, so
    # that the fallback to the public inc() is noticed.
    assert inc == counter._value.inc
    assert registry.get_sample_value("django_websocket_connections_total", {"route": "r/"}) == 3.0


def test_fast_inc_falls_back_to_public_inc():
    class Child:
        def __init__(self):
            self.total = 0

        def inc(self, amount=1):
            self.total += amount

    child = Child()
    fast_inc(child)(5)

    assert child.total == 5


def histogram_samples(registry):
    return {
        (sample.name, sample.labels.get("le")): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_fast_observe_matches_observe():
    amounts = [0, 0.5, 1, 1.0000001, 2.5, 10, 10.5, 1e9, float("inf"), -3, 1e-12]
    public_registry, fast_registry = CollectorRegistry(), CollectorRegistry()
    buckets = (0.5, 1, 2.5, 10)
    public = Histogram("h", "h", ["route"], buckets=buckets, registry=public_registry).labels("r/")
    fast_child = Histogram("h", "h", ["route"], buckets=buckets, registry=fast_registry).labels("r/")
    observe = fast_observe(fast_child)

    for amount in amounts:
        public.observe(amount)
        observe(amount)

    assert observe is not fast_child.observe
    assert histogram_samples(fast_registry) == histogram_samples(public_registry)


def test_fast_observe_falls_back_to_public_observe():
    class Child:
        def observe(self, amount):
            pass

    child = Child()

    assert fast_observe(child) == child.observe
