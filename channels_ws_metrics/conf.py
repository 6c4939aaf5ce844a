"""The ``CHANNELS_WS_METRICS`` setting: defaults, validation and the accessor.

Settings are read from ``django.conf.settings`` when first asked for and
read again after ``setting_changed``, so ``override_settings`` and
pytest-django's ``settings`` fixture take effect.
"""

from __future__ import annotations

import difflib
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

SETTING_NAME = "CHANNELS_WS_METRICS"

#: Seconds. Long-lived sockets: from half a second to a day.
DEFAULT_CONNECTION_DURATION_BUCKETS: tuple[float, ...] = (
    0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400,
)  # fmt: skip

#: Seconds. From the cost of a bare ``accept()`` to a slow authentication.
DEFAULT_HANDSHAKE_DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip

KNOWN_KEYS = (
    "NAMESPACE",
    "CONNECTION_DURATION_BUCKETS",
    "HANDSHAKE_DURATION_BUCKETS",
)

# Check ids, never reused. The tests import them.
E_NOT_A_DICT = "channels_ws_metrics.E001"
E_UNKNOWN_KEY = "channels_ws_metrics.E002"
E_INVALID_NAMESPACE = "channels_ws_metrics.E003"
E_BUCKETS_TYPE = "channels_ws_metrics.E004"
E_BUCKETS_VALUES = "channels_ws_metrics.E005"

_NAMESPACE_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class WebSocketMetricsSettings:
    """Validated values of ``CHANNELS_WS_METRICS`` with defaults filled in."""

    namespace: str = ""
    connection_duration_buckets: tuple[float, ...] = DEFAULT_CONNECTION_DURATION_BUCKETS
    handshake_duration_buckets: tuple[float, ...] = DEFAULT_HANDSHAKE_DURATION_BUCKETS


def validate(raw: Any, default_namespace: Any = "") -> list[CheckMessage]:
    """Return a check message for each mistake in a ``CHANNELS_WS_METRICS`` value."""
    if not isinstance(raw, dict):
        return [
            Error(
                f"{SETTING_NAME} must be a dict, not {type(raw).__name__} ({raw!r}).",
                hint=f"Set {SETTING_NAME} = {{}} to use the defaults, "
                "or a dict of the keys to change.",
                id=E_NOT_A_DICT,
            )
        ]

    errors: list[CheckMessage] = []
    for key in raw:
        if key not in KNOWN_KEYS:
            errors.append(_unknown_key_error(key))

    if "NAMESPACE" in raw:
        errors += _validate_namespace(f"{SETTING_NAME}['NAMESPACE']", raw["NAMESPACE"])
    else:
        errors += _validate_namespace("PROMETHEUS_METRIC_NAMESPACE", default_namespace)

    for key in ("CONNECTION_DURATION_BUCKETS", "HANDSHAKE_DURATION_BUCKETS"):
        if key in raw:
            errors += _validate_buckets(key, raw[key])
    return errors


def _unknown_key_error(key: Any) -> CheckMessage:
    close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1) if isinstance(key, str) else []
    if close:
        hint = f"Did you mean {close[0]!r}?"
    else:
        hint = "Valid keys are: " + ", ".join(KNOWN_KEYS) + "."
    return Error(f"{SETTING_NAME} has an unknown key {key!r}.", hint=hint, id=E_UNKNOWN_KEY)


def _validate_namespace(name: str, value: Any) -> list[CheckMessage]:
    if isinstance(value, str) and (value == "" or _NAMESPACE_RE.fullmatch(value)):
        return []
    return [
        Error(
            f"{name} must be a string usable as a Prometheus metric name prefix, got {value!r}.",
            hint="Use letters, digits and underscores, not starting with a digit, "
            "or an empty string for no prefix.",
            id=E_INVALID_NAMESPACE,
        )
    ]


def _validate_buckets(key: str, value: Any) -> list[CheckMessage]:
    name = f"{SETTING_NAME}[{key!r}]"
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or not value
        or not all(_is_number(bound) for bound in value)
    ):
        return [
            Error(
                f"{name} must be a non-empty list or tuple of numbers, got {value!r}.",
                hint="Give the upper bounds in seconds, for example [0.1, 1, 10]; "
                "the +Inf bucket is added for you.",
                id=E_BUCKETS_TYPE,
            )
        ]
    if any(not bound > 0 for bound in value) or any(
        later <= earlier for earlier, later in zip(value, value[1:])
    ):
        return [
            Error(
                f"{name} must be positive and strictly increasing, got {value!r}.",
                hint=f"Sort the bounds and drop duplicates and values <= 0: {_suggest(value)!r}.",
                id=E_BUCKETS_VALUES,
            )
        ]
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _suggest(bounds: Sequence[float]) -> list[float]:
    return sorted({bound for bound in bounds if bound > 0})


def _build(raw: dict[str, Any], default_namespace: str) -> WebSocketMetricsSettings:
    defaults = WebSocketMetricsSettings()
    return WebSocketMetricsSettings(
        namespace=raw.get("NAMESPACE", default_namespace),
        connection_duration_buckets=tuple(
            raw.get("CONNECTION_DURATION_BUCKETS", defaults.connection_duration_buckets)
        ),
        handshake_duration_buckets=tuple(
            raw.get("HANDSHAKE_DURATION_BUCKETS", defaults.handshake_duration_buckets)
        ),
    )


def read_raw() -> tuple[Any, Any]:
    """Return ``CHANNELS_WS_METRICS`` and django-prometheus's namespace as set."""
    raw = getattr(django_settings, SETTING_NAME, {})
    default_namespace = getattr(django_settings, "PROMETHEUS_METRIC_NAMESPACE", "")
    return raw, default_namespace


_lock = threading.Lock()
_cached: WebSocketMetricsSettings | None = None


def get_settings() -> WebSocketMetricsSettings:
    """Return the validated settings, raising ``ImproperlyConfigured`` on a mistake."""
    cached = _cached
    if cached is not None:
        return cached
    return _load()


def _load() -> WebSocketMetricsSettings:
    global _cached
    with _lock:
        if _cached is not None:
            return _cached
        raw, default_namespace = read_raw()
        errors = validate(raw, default_namespace)
        if errors:
            first = errors[0]
            raise ImproperlyConfigured(f"{first.msg} {first.hint} ({first.id})")
        _cached = _build(raw, default_namespace)
        return _cached


#: Django settings whose change makes the cached settings stale.
WATCHED_SETTINGS = frozenset({SETTING_NAME, "PROMETHEUS_METRIC_NAMESPACE"})


def clear_cache() -> None:
    """Forget the cached settings so the next ``get_settings()`` reads them again."""
    global _cached
    with _lock:
        _cached = None


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        clear_cache()


setting_changed.connect(_on_setting_changed)
