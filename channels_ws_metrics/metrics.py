"""The metric families, created once per process, and per-route children."""

from __future__ import annotations

import atexit
import math
import os
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from .close_codes import CloseCodeLabels
from .conf import (
    MIN_MESSAGE_FLUSH_INTERVAL,
    WATCHED_SETTINGS,
    WebSocketMetricsSettings,
    clear_cache,
    get_settings,
)
from .labels import ExtraLabels
from .ratelimit import CONNECTION_GOES_ON, report_failure

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
    "message_received": "adding received messages to the counters",
    "message_sent": "adding sent messages to the counters",
    "close": "recording the end of the connection",
    "exception": "counting the exception",
    "extra_label": "computing an extra label",
    "message_flush": "starting the thread that flushes the message counts",
}

# The operation of the metric errors counter that a failed flush of each
# of MessageCounts' four counts is reported under.
MESSAGE_OPERATIONS = ("message_received", "message_received", "message_sent", "message_sent")

# The last sentence of the log record for a failure of these operations,
# in place of the default that the connection goes on.
CONSEQUENCES = {
    "message_flush": "Message counts reach the counters only at scrapes of a single process "
    "and at the end of each connection.",
}

Message = dict[str, Any]


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


def fast_observe(child: Any) -> Callable[[float], None]:
    """Return a function that observes an amount in a labelled histogram child.

    ``Histogram.observe()`` checks that the metric is a labelled child, then
    adds the amount to the sum and walks the bucket bounds in Python to add
    one to the first bucket whose bound is at least the amount. Every child
    here is labelled by construction, and a binary search finds the same
    bucket.
    """
    # NOTE: ``_sum``, ``_buckets`` and ``_upper_bounds`` are internal to
    # prometheus_client 0.26. A child that lacks them gets its public
    # observe(). Exemplars, which this package does not use, need it too.
    sum_value = getattr(child, "_sum", None)
    buckets = getattr(child, "_buckets", None)
    bounds = getattr(child, "_upper_bounds", None)
    usable = (
        callable(getattr(sum_value, "inc", None))
        and isinstance(buckets, list)
        and isinstance(bounds, list)
        and len(buckets) == len(bounds) > 0
        and bounds[-1] == math.inf
        and all(callable(getattr(bucket, "inc", None)) for bucket in buckets)
    )
    if not usable:
        return child.observe
    add_to_sum = sum_value.inc
    bucket_incs = tuple(bucket.inc for bucket in buckets)
    sorted_bounds = tuple(bounds)

    def observe(amount: float) -> None:
        add_to_sum(amount)
        bucket_incs[bisect_left(sorted_bounds, amount)](1)

    return observe


def _fast_observe_or_none(child: Any) -> Callable[[float], None] | None:
    return None if child is None else fast_observe(child)


class MessageCounts:
    """Messages and payload bytes of one connection, added to the counters in batches.

    A locked counter update costs several times as much as adding to an
    attribute, and the middleware would make four of them for every echoed
    message. So the middleware only adds to these four integers, and
    ``WebSocketMetrics.flush_messages()`` adds what they gained since the
    previous flush to the route's counters: whenever their registry is
    collected, every ``MESSAGE_FLUSH_INTERVAL`` seconds, when the
    connection ends and at interpreter exit.

    Only the connection's own coroutine writes the four counts, and only a
    flush, under the owner's flush lock, writes what was flushed, so a flush
    from another thread neither loses nor repeats a message.

    A counter update that raises is not tried again. prometheus_client's
    multiprocess values add the amount in memory before they write it to
    the file, so the next write that works carries it, and a retry would
    count it twice.
    """

    __slots__ = ("received", "received_bytes", "sent", "sent_bytes", "route_metrics", "_flushed")

    def __init__(self, route_metrics: RouteMetrics) -> None:
        self.received = 0
        self.received_bytes = 0
        self.sent = 0
        self.sent_bytes = 0
        self.route_metrics = route_metrics
        self._flushed = (0, 0, 0, 0)

    def flush(self, failures: dict[str, Exception]) -> None:
        """Add the counts gained since the last flush to the counters.

        Call with the owner's flush lock held. Each failed update puts its
        operation and exception in ``failures``, for the caller to report
        once after releasing the lock.
        """
        # Read once: the connection may count another message meanwhile.
        current = (self.received, self.received_bytes, self.sent, self.sent_bytes)
        flushed = self._flushed
        if current == flushed:
            return
        self._flushed = current
        for index, inc in enumerate(self.route_metrics.message_incs):
            delta = current[index] - flushed[index]
            if delta:
                try:
                    inc(delta)
                except Exception as exc:
                    failures.setdefault(MESSAGE_OPERATIONS[index], exc)


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
        self.observe_duration = fast_observe(bind(metrics.connection_duration))
        self.count_handshake = {outcome: fast_inc(bind(metrics.handshakes_total, outcome)) for outcome in OUTCOMES}
        self.observe_handshake = {
            outcome: fast_observe(bind(metrics.handshake_duration, outcome)) for outcome in OUTCOMES
        }

        # None for a disabled family, so the per-message path can skip it
        # without a lookup.
        self.observe_received_size = _fast_observe_or_none(bind(metrics.message_size, RECEIVED))
        self.observe_sent_size = _fast_observe_or_none(bind(metrics.message_size, SENT))
        #: Increments of the message and byte counters, in the order of
        #: MessageCounts' counts, or None with MESSAGE_METRICS off.
        self.message_incs: tuple[Callable[[float], None], ...] | None = None
        if metrics.messages_received_total is not None:
            self.message_incs = tuple(
                fast_inc(bind(family))
                for family in (
                    metrics.messages_received_total,
                    metrics.received_bytes_total,
                    metrics.messages_sent_total,
                    metrics.sent_bytes_total,
                )
            )

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

        # Connections' message counts not yet flushed, and the lock that
        # makes each flush see and update them alone.
        self._message_counts: set[MessageCounts] = set()
        self._flush_lock = threading.Lock()
        self._flusher: _Flusher | None = None
        self.message_flush_interval = settings.message_flush_interval
        self._flush_hook: _FlushOnCollect | None = None
        _all_metrics.add(self)
        if settings.message_metrics and registry is not None:
            # Registered ahead of the families: a registry collects in the
            # order of registration, so every scrape flushes first.
            self._flush_hook = _FlushOnCollect(self)
            registry.register(self._flush_hook)

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
        consequence = CONSEQUENCES.get(operation, CONNECTION_GOES_ON)
        report_failure(description or OPERATIONS[operation], exc, consequence)
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

    def open_message_counts(self, route_metrics: RouteMetrics) -> MessageCounts | None:
        """Start counting one connection's messages, or return ``None`` when ``MESSAGE_METRICS`` is off."""
        if route_metrics.message_incs is None:
            return None
        counts = MessageCounts(route_metrics)
        self._message_counts.add(counts)
        if self._flusher is None:
            self._start_flusher()
        return counts

    def close_message_counts(self, counts: MessageCounts) -> None:
        """Flush one connection's message counts for the last time and stop tracking them."""
        if not (counts.received or counts.sent):
            # Nothing was counted, so no flush, here or in another thread,
            # has anything to add: the lock is not needed.
            self._message_counts.discard(counts)
            return
        failures: dict[str, Exception] = {}
        with self._flush_lock:
            self._message_counts.discard(counts)
            counts.flush(failures)
        self._report(failures)

    def flush_messages(self) -> None:
        """Add the messages and bytes that connections counted since the last flush to the counters.

        A failing storage is reported once per operation and flush, not once
        per connection, so that its cost does not grow with the open
        connections.
        """
        failures: dict[str, Exception] = {}
        with self._flush_lock:
            # A copy, because connections come and go while this runs in
            # another thread.
            for counts in list(self._message_counts):
                counts.flush(failures)
        self._report(failures)

    def _report(self, failures: dict[str, Exception]) -> None:
        for operation, exc in failures.items():
            self.failed(operation, exc)

    def _after_fork_in_child(self) -> None:
        # The child has neither the parent's thread nor its connections, and
        # the parent's flush thread may have held the lock during the fork.
        self._flusher = None
        self._flush_lock = threading.Lock()
        self._message_counts = set()

    def _start_flusher(self) -> None:
        with self._flush_lock:
            if self._flusher is not None:
                return
            flusher = _Flusher(self, self.message_flush_interval)
            try:
                flusher.start()
            except RuntimeError as exc:
                # The counts still reach the counters when the registry is
                # collected and when connections end, and the next
                # connection tries again.
                self.failed("message_flush", exc)
                return
            self._flusher = flusher
        # Metrics that only the cyclic garbage collector frees would keep
        # their thread until the next wake-up; this ends it at once.
        weakref.finalize(self, flusher.stop)

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
        if self._flusher is not None:
            self._flusher.stop()
        if self.registry is None:
            return
        hook = () if self._flush_hook is None else (self._flush_hook,)
        for collector in (*hook, *self.collectors):
            try:
                self.registry.unregister(collector)
            except KeyError:
                pass


class _FlushOnCollect:
    """A collector with no metrics that flushes the message counts when the registry collects."""

    def __init__(self, metrics: WebSocketMetrics) -> None:
        # Weak, so that the registry does not keep replaced metrics alive.
        self._metrics = weakref.ref(metrics)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        metrics = self._metrics()
        if metrics is not None:
            metrics.flush_messages()
        return iter(())


class _Flusher(threading.Thread):
    """Daemon thread that flushes one WebSocketMetrics' message counts every ``interval`` seconds.

    Scrapes of this process flush anyway. The thread serves the readers
    that do not: scrapes by another process in multiprocess mode, and
    registries filtered by metric name.
    """

    def __init__(self, metrics: WebSocketMetrics, interval: float) -> None:
        super().__init__(name="channels_ws_metrics-flusher", daemon=True)
        # Weak, so that metrics replaced after a settings change, or built by
        # a test, end their thread once nothing else uses them.
        self._metrics = weakref.ref(metrics)
        # Settings built in code skip the check of the interval's bounds,
        # and Event.wait() raises OverflowError past TIMEOUT_MAX.
        self.interval = min(max(interval, MIN_MESSAGE_FLUSH_INTERVAL), threading.TIMEOUT_MAX)
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            metrics = self._metrics()
            if metrics is None:
                return
            try:
                metrics.flush_messages()
            except Exception as exc:
                # flush_messages() reports failed counter updates itself, so
                # this is an unexpected error. The next round tries again.
                report_failure("flushing the message counts", exc)
            del metrics

    def stop(self) -> None:
        """Ask the thread to end; it ends within ``interval`` seconds."""
        self._stopped.set()


# Every WebSocketMetrics of the process, for the fork and exit hooks.
_all_metrics: weakref.WeakSet[WebSocketMetrics] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for metrics in list(_all_metrics):
        metrics._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _flush_at_exit() -> None:
    # A worker that exits with connections still open, for example after a
    # server's shutdown timeout, writes their counts to the multiprocess
    # files first.
    for metrics in list(_all_metrics):
        try:
            metrics.flush_messages()
        except Exception as exc:
            report_failure("flushing the message counts at exit", exc)


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
