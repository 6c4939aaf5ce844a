"""The metric families, created once per process, and per-route children."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from .conf import (
    DEFAULT_CONNECTION_DURATION_BUCKETS,
    DEFAULT_HANDSHAKE_DURATION_BUCKETS,
    WATCHED_SETTINGS,
    WebSocketMetricsSettings,
    clear_cache,
    get_settings,
)

ACCEPTED = "accepted"
REJECTED = "rejected"
ERROR = "error"
ABANDONED = "abandoned"
OUTCOMES = (ACCEPTED, REJECTED, ERROR, ABANDONED)

CLIENT = "client"
SERVER = "server"


class RouteMetrics:
    """Children of every family bound to one ``route`` label value.

    Binding once per route keeps ``labels()`` (a lock and a dict lookup) off
    the per-message path.
    """

    __slots__ = (
        "route",
        "active",
        "connections",
        "duration",
        "handshakes",
        "handshake_durations",
        "messages_received",
        "messages_sent",
        "received_bytes",
        "sent_bytes",
        "_closed_family",
        "_closed",
        "_exceptions_family",
        "_lock",
    )

    def __init__(self, metrics: WebSocketMetrics, route: str) -> None:
        self.route = route
        self.active = metrics.connections_active.labels(route)
        self.connections = metrics.connections_total.labels(route)
        self.duration = metrics.connection_duration.labels(route)
        self.handshakes = {
            outcome: metrics.handshakes_total.labels(route, outcome) for outcome in OUTCOMES
        }
        self.handshake_durations = {
            outcome: metrics.handshake_duration.labels(route, outcome) for outcome in OUTCOMES
        }
        self.messages_received = metrics.messages_received_total.labels(route)
        self.messages_sent = metrics.messages_sent_total.labels(route)
        self.received_bytes = metrics.received_bytes_total.labels(route)
        self.sent_bytes = metrics.sent_bytes_total.labels(route)
        self._closed_family = metrics.connections_closed_total
        # Keyed by (code label, initiator): at most a few dozen entries, because
        # close code labels are bucketed.
        self._closed: dict[tuple[str, str], Any] = {}
        self._exceptions_family = metrics.exceptions_total
        self._lock = threading.Lock()

    def closed(self, code_label: str, initiator: str) -> Any:
        key = (code_label, initiator)
        child = self._closed.get(key)
        if child is None:
            child = self._closed_family.labels(self.route, code_label, initiator)
            with self._lock:
                self._closed[key] = child
        return child

    def exception(self, exception_type: str) -> Any:
        # Rare, so not cached: an exception is already the expensive path.
        return self._exceptions_family.labels(self.route, exception_type)


class WebSocketMetrics:
    """The metric families of this package, registered in one registry.

    The process-wide set on the default registry comes from ``get_metrics()``.
    Tests build their own with a fresh ``CollectorRegistry`` and pass it to
    the middleware.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        namespace: str = "",
        connection_duration_buckets: Sequence[float] = DEFAULT_CONNECTION_DURATION_BUCKETS,
        handshake_duration_buckets: Sequence[float] = DEFAULT_HANDSHAKE_DURATION_BUCKETS,
        settings: WebSocketMetricsSettings | None = None,
    ) -> None:
        self.registry = registry
        #: The settings these families were built from, when built from settings.
        self.settings = settings
        common: dict[str, Any] = {"namespace": namespace, "registry": registry}

        self.connections_active = Gauge(
            "django_websocket_connections_active",
            "WebSocket connections accepted and not yet closed.",
            ["route"],
            multiprocess_mode="livesum",
            **common,
        )
        self.connections_total = Counter(
            "django_websocket_connections_total",
            "WebSocket connections accepted.",
            ["route"],
            **common,
        )
        self.connection_duration = Histogram(
            "django_websocket_connection_duration_seconds",
            "Time from accept to the end of the WebSocket connection.",
            ["route"],
            buckets=connection_duration_buckets,
            **common,
        )
        self.handshakes_total = Counter(
            "django_websocket_handshakes_total",
            "WebSocket connection attempts by the application's decision.",
            ["route", "outcome"],
            **common,
        )
        self.handshake_duration = Histogram(
            "django_websocket_handshake_duration_seconds",
            "Time from the connection attempt to the application's decision.",
            ["route", "outcome"],
            buckets=handshake_duration_buckets,
            **common,
        )
        self.connections_closed_total = Counter(
            "django_websocket_connections_closed_total",
            "Accepted WebSocket connections closed, by close code and by who closed first.",
            ["route", "code", "initiator"],
            **common,
        )
        self.messages_received_total = Counter(
            "django_websocket_messages_received_total",
            "WebSocket messages received from clients.",
            ["route"],
            **common,
        )
        self.messages_sent_total = Counter(
            "django_websocket_messages_sent_total",
            "WebSocket messages sent to clients.",
            ["route"],
            **common,
        )
        self.received_bytes_total = Counter(
            "django_websocket_received_bytes_total",
            "Payload bytes of WebSocket messages received (UTF-8 length of text).",
            ["route"],
            **common,
        )
        self.sent_bytes_total = Counter(
            "django_websocket_sent_bytes_total",
            "Payload bytes of WebSocket messages sent (UTF-8 length of text).",
            ["route"],
            **common,
        )
        self.exceptions_total = Counter(
            "django_websocket_exceptions_total",
            "Exceptions that escaped the WebSocket application, by class name.",
            ["route", "exception_type"],
            **common,
        )

        # Keyed by route label, whose values come from the router's patterns
        # plus two fixed labels, so the cache cannot grow with traffic.
        self._routes: dict[str, RouteMetrics] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: WebSocketMetricsSettings, registry: CollectorRegistry | None = REGISTRY
    ) -> WebSocketMetrics:
        return cls(
            registry,
            namespace=settings.namespace,
            connection_duration_buckets=settings.connection_duration_buckets,
            handshake_duration_buckets=settings.handshake_duration_buckets,
            settings=settings,
        )

    @property
    def collectors(self) -> tuple[Any, ...]:
        return (
            self.connections_active,
            self.connections_total,
            self.connection_duration,
            self.handshakes_total,
            self.handshake_duration,
            self.connections_closed_total,
            self.messages_received_total,
            self.messages_sent_total,
            self.received_bytes_total,
            self.sent_bytes_total,
            self.exceptions_total,
        )

    def for_route(self, route: str) -> RouteMetrics:
        route_metrics = self._routes.get(route)
        if route_metrics is None:
            with self._lock:
                route_metrics = self._routes.get(route)
                if route_metrics is None:
                    route_metrics = RouteMetrics(self, route)
                    self._routes[route] = route_metrics
        return route_metrics

    def unregister(self) -> None:
        """Remove these families from their registry so another set can take the names."""
        if self.registry is None:
            return
        for collector in self.collectors:
            try:
                self.registry.unregister(collector)
            except KeyError:
                pass


_lock = threading.Lock()
_current: WebSocketMetrics | None = None


def get_metrics() -> WebSocketMetrics:
    """Return the process-wide metrics on the default registry.

    They are built on first use and built again, replacing the old families,
    when the settings they came from change.
    """
    settings = get_settings()
    current = _current
    if current is not None and current.settings is settings:
        return current
    return _rebuild(settings)


def _rebuild(settings: WebSocketMetricsSettings) -> WebSocketMetrics:
    global _current
    with _lock:
        if _current is not None:
            if _current.settings is settings:
                return _current
            _current.unregister()
        _current = WebSocketMetrics.from_settings(settings, REGISTRY)
        return _current


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    # Rebuild at once, so the default registry never exports families built
    # from settings that no longer apply.
    if setting not in WATCHED_SETTINGS or _current is None:
        return
    clear_cache()
    try:
        get_metrics()
    except ImproperlyConfigured:
        pass  # reported by the system checks and by the next get_metrics()


setting_changed.connect(_on_setting_changed)
