"""The metric families, created once per process, and per-route children."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from .close_codes import CloseCodeLabels
from .conf import WATCHED_SETTINGS, WebSocketMetricsSettings, clear_cache, get_settings
from .labels import ExtraLabels
from .ratelimit import report_failure

ACCEPTED = "accepted"
REJECTED = "rejected"
ERROR = "error"
ABANDONED = "abandoned"
OUTCOMES = (ACCEPTED, REJECTED, ERROR, ABANDONED)

CLIENT = "client"
SERVER = "server"

RECEIVED = "received"
SENT = "sent"

# Values of the ``operation`` label of the metric errors counter, with the
# words the log uses for each.
OPERATIONS = {
    "setup": "setting up metrics for a connection",
    "handshake": "recording the handshake",
    "accept": "recording the accepted connection",
    "message_received": "recording a received message",
    "message_sent": "recording a sent message",
    "close": "recording the end of the connection",
    "exception": "counting the exception",
    "extra_label": "computing an extra label",
}

Message = dict[str, Any]


def _bound_method(child: Any, name: str) -> Callable[..., None] | None:
    return None if child is None else getattr(child, name)


def fast_inc(child: Any) -> Callable[[float], None]:
    """Return a function that adds its argument to a labelled counter or gauge child.

    ``Counter.inc()`` and ``Gauge.inc()`` check that the metric is a labelled
    child and, for counters, that the amount is not negative, then call the
    inc() of the value object they store as ``_value``. Both checks hold
    here by construction, so calling the value's inc() directly saves three
    Python calls per update on the per-message path.
    """
    # NOTE: ``_value`` is internal to prometheus_client. In 0.26 it is a
    # MutexValue, or a MmapedValue in multiprocess mode. A child without it
    # gets its public inc(), which takes the same argument.
    value_inc = getattr(getattr(child, "_value", None), "inc", None)
    return value_inc if callable(value_inc) else child.inc


def _fast_inc_or_none(child: Any) -> Callable[[float], None] | None:
    return None if child is None else fast_inc(child)


class RouteMetrics:
    """Update functions of every family, bound to one set of label values.

    Binding once per route keeps ``labels()`` (a lock and a dict lookup) off
    the per-connection and per-message paths.
    """

    def __init__(self, metrics: WebSocketMetrics, label_values: tuple[str, ...]) -> None:
        self.owner = metrics
        self._label_values = label_values
        first, rest = label_values[:1], label_values[1:]

        def bind(family: Any, *values: str) -> Any:
            if family is None:
                return None
            return family.labels(*first, *values, *rest)

        #: Takes +1 at accept and -1 at the end of the connection.
        self.add_active = fast_inc(bind(metrics.connections_active))
        self.count_connection = fast_inc(bind(metrics.connections_total))
        self.observe_duration = bind(metrics.connection_duration).observe
        self.count_handshake = {outcome: fast_inc(bind(metrics.handshakes_total, outcome)) for outcome in OUTCOMES}
        self.observe_handshake = {
            outcome: bind(metrics.handshake_duration, outcome).observe for outcome in OUTCOMES
        }

        # None for a disabled family, so the per-message path can skip it
        # without a lookup.
        self.count_received = _fast_inc_or_none(bind(metrics.messages_received_total))
        self.count_received_bytes = _fast_inc_or_none(bind(metrics.received_bytes_total))
        self.observe_received_size = _bound_method(bind(metrics.message_size, RECEIVED), "observe")
        self.count_sent = _fast_inc_or_none(bind(metrics.messages_sent_total))
        self.count_sent_bytes = _fast_inc_or_none(bind(metrics.sent_bytes_total))
        self.observe_sent_size = _bound_method(bind(metrics.message_size, SENT), "observe")

        self._closed_family = metrics.connections_closed_total
        # Keyed by (code label, initiator): at most a few dozen entries,
        # because close code labels are bucketed.
        self._closed: dict[tuple[str, str], Callable[[float], None]] = {}
        self._exceptions_family = metrics.exceptions_total
        self._lock = threading.Lock()

    def count_closed(self, code_label: str, initiator: str) -> None:
        key = (code_label, initiator)
        inc = self._closed.get(key)
        if inc is None:
            values = self._label_values
            inc = fast_inc(self._closed_family.labels(values[0], code_label, initiator, *values[1:]))
            with self._lock:
                self._closed[key] = inc
        inc(1)

    def count_exception(self, exception_type: str) -> None:
        # Not cached: an escaping exception is already the expensive path.
        values = self._label_values
        self._exceptions_family.labels(values[0], exception_type, *values[1:]).inc()


class WebSocketMetrics:
    """The metric families of this package, registered in one registry.

    The process-wide set on the default registry comes from ``get_metrics()``.
    Tests build their own with a fresh ``CollectorRegistry`` and pass it to
    the middleware.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        settings: WebSocketMetricsSettings | None = None,
    ) -> None:
        if settings is None:
            settings = WebSocketMetricsSettings()
        self.registry = registry
        self.settings = settings
        self.close_code_label = CloseCodeLabels(settings.close_codes)
        self.extra_labels = ExtraLabels(
            settings.extra_labels, settings.max_label_values, on_failure=self._extra_label_failed
        )
        self.skip_paths = settings.skip_paths

        extra = self.extra_labels.names
        collectors: list[Any] = []

        def build(kind: type, name: str, documentation: str, labels: list[str], **options: Any) -> Any:
            family = kind(
                name,
                documentation,
                labels + list(extra),
                namespace=settings.namespace,
                registry=registry,
                **options,
            )
            collectors.append(family)
            return family

        self.connections_active = build(
            Gauge,
            "django_websocket_connections_active",
            "WebSocket connections accepted and not yet closed.",
            ["route"],
            multiprocess_mode="livesum",
        )
        self.connections_total = build(
            Counter, "django_websocket_connections_total", "WebSocket connections accepted.", ["route"]
        )
        self.connection_duration = build(
            Histogram,
            "django_websocket_connection_duration_seconds",
            "Time from accept to the end of the WebSocket connection.",
            ["route"],
            buckets=settings.connection_duration_buckets,
        )
        self.handshakes_total = build(
            Counter,
            "django_websocket_handshakes_total",
            "WebSocket connection attempts by the application's decision.",
            ["route", "outcome"],
        )
        self.handshake_duration = build(
            Histogram,
            "django_websocket_handshake_duration_seconds",
            "Time from the connection attempt to the application's decision.",
            ["route", "outcome"],
            buckets=settings.handshake_duration_buckets,
        )
        self.connections_closed_total = build(
            Counter,
            "django_websocket_connections_closed_total",
            "Accepted WebSocket connections closed, by close code and by who closed first.",
            ["route", "code", "initiator"],
        )

        self.messages_received_total = None
        self.messages_sent_total = None
        self.received_bytes_total = None
        self.sent_bytes_total = None
        if settings.message_metrics:
            self.messages_received_total = build(
                Counter,
                "django_websocket_messages_received_total",
                "WebSocket messages received from clients.",
                ["route"],
            )
            self.messages_sent_total = build(
                Counter,
                "django_websocket_messages_sent_total",
                "WebSocket messages sent to clients.",
                ["route"],
            )
            self.received_bytes_total = build(
                Counter,
                "django_websocket_received_bytes_total",
                "Payload bytes of WebSocket messages received (UTF-8 length of text).",
                ["route"],
            )
            self.sent_bytes_total = build(
                Counter,
                "django_websocket_sent_bytes_total",
                "Payload bytes of WebSocket messages sent (UTF-8 length of text).",
                ["route"],
            )

        self.message_size = None
        if settings.message_size_histogram:
            self.message_size = build(
                Histogram,
                "django_websocket_message_size_bytes",
                "Payload size of WebSocket messages (UTF-8 length of text).",
                ["route", "direction"],
                buckets=settings.message_size_buckets,
            )

        self.exceptions_total = build(
            Counter,
            "django_websocket_exceptions_total",
            "Exceptions that escaped the WebSocket application, by class name.",
            ["route", "exception_type"],
        )
        # Not labelled with the extra labels: a failure may happen before
        # their values are known.
        self.metric_errors_total = Counter(
            "django_websocket_metric_errors_total",
            "Failures of channels_ws_metrics to record a metric; the connections went on.",
            ["operation"],
            namespace=settings.namespace,
            registry=registry,
        )
        collectors.append(self.metric_errors_total)
        self.collectors = tuple(collectors)
        # Failures not yet added to metric_errors_total, by operation. They
        # wait in memory while the metric storage itself fails.
        self.pending_errors: dict[str, int] = {}

        # Keyed by label values: routes come from the router's patterns plus
        # two fixed labels, and each extra label is capped at
        # MAX_LABEL_VALUES, so the cache cannot grow with traffic.
        self._routes: dict[tuple[str, ...], RouteMetrics] = {}
        self._lock = threading.Lock()

    def failed(self, operation: str, exc: BaseException, description: str | None = None) -> None:
        """Log a failure to record a metric (rate-limited) and count it."""
        report_failure(description or OPERATIONS[operation], exc)
        with self._lock:
            self.pending_errors[operation] = self.pending_errors.get(operation, 0) + 1
        self.flush_errors()

    def flush_errors(self) -> None:
        """Add the failures counted in memory to ``metric_errors_total``, if it works now."""
        with self._lock:
            pending, self.pending_errors = self.pending_errors, {}
        unrecorded: dict[str, int] = {}
        for operation, count in pending.items():
            try:
                self.metric_errors_total.labels(operation).inc(count)
            except Exception:
                # The storage is still failing; that failure was logged already.
                unrecorded[operation] = count
        if unrecorded:
            with self._lock:
                for operation, count in unrecorded.items():
                    self.pending_errors[operation] = self.pending_errors.get(operation, 0) + count

    def _extra_label_failed(self, name: str, exc: BaseException) -> None:
        self.failed("extra_label", exc, f"EXTRA_LABELS[{name!r}] callable")

    def skips(self, path: Any) -> bool:
        """Return whether connections to ``path`` are left uninstrumented."""
        if not self.skip_paths or not isinstance(path, str):
            return False
        return any(pattern.fullmatch(path) for pattern in self.skip_paths)

    def for_route(self, route: str, extra_values: tuple[str, ...] = ()) -> RouteMetrics:
        key = (route, *extra_values) if extra_values else (route,)
        route_metrics = self._routes.get(key)
        if route_metrics is None:
            with self._lock:
                route_metrics = self._routes.get(key)
                if route_metrics is None:
                    route_metrics = RouteMetrics(self, key)
                    self._routes[key] = route_metrics
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
        _current = WebSocketMetrics(REGISTRY, settings)
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
