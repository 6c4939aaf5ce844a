"""The ``CHANNELS_WS_METRICS`` setting: defaults, validation and the accessor.

Settings are read from ``django.conf.settings`` when first asked for and
read again after ``setting_changed``, so ``override_settings`` and
pytest-django's ``settings`` fixture take effect.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .export import ExportRules

SETTING_NAME = "CHANNELS_WS_METRICS"

#: Seconds. Long-lived sockets: from half a second to a day.
DEFAULT_CONNECTION_DURATION_BUCKETS: tuple[float, ...] = (
    0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400,
)  # fmt: skip

#: Seconds. From the cost of a bare ``accept()`` to a slow authentication.
DEFAULT_HANDSHAKE_DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip

#: Bytes. Powers of 4 from 64 B to 1 MiB.
DEFAULT_MESSAGE_SIZE_BUCKETS: tuple[float, ...] = tuple(64 * 4**power for power in range(8))

DEFAULT_MAX_LABEL_VALUES = 50

#: Seconds between two additions of the per-connection message counts to
#: the counters by the background thread.
DEFAULT_MESSAGE_FLUSH_INTERVAL = 1.0
#: Bounds of that interval. Below the minimum the thread would spend more
#: time waking up than flushing, and the maximum keeps the lag of the
#: counters in multiprocess mode under an hour.
MIN_MESSAGE_FLUSH_INTERVAL = 0.01
MAX_MESSAGE_FLUSH_INTERVAL = 3600.0

#: Labels this package sets itself, plus names Prometheus and the
#: multiprocess collector give a meaning of their own.
RESERVED_LABEL_NAMES = frozenset(
    {"route", "outcome", "code", "initiator", "exception_type", "direction", "le", "quantile", "pid"}
)

# Check ids, never reused. The tests import them.
E_NOT_A_DICT = "channels_ws_metrics.E001"
E_UNKNOWN_KEY = "channels_ws_metrics.E002"
E_WRONG_TYPE = "channels_ws_metrics.E003"
E_BUCKETS_VALUES = "channels_ws_metrics.E004"
E_INVALID_NAMESPACE = "channels_ws_metrics.E005"
E_CLOSE_CODE_RANGE = "channels_ws_metrics.E006"
E_SKIP_PATH_REGEX = "channels_ws_metrics.E007"
E_LABEL_IMPORT = "channels_ws_metrics.E008"
E_LABEL_NOT_CALLABLE = "channels_ws_metrics.E009"
E_LABEL_NAME_INVALID = "channels_ws_metrics.E010"
E_LABEL_NAME_RESERVED = "channels_ws_metrics.E011"
E_MAX_LABEL_VALUES = "channels_ws_metrics.E012"
E_EXPORT_PLAINTEXT_SECRET = "channels_ws_metrics.E013"
E_EXPORT_INVALID_NETWORK = "channels_ws_metrics.E014"
E_EXPORT_INVALID_ENV_NAME = "channels_ws_metrics.E015"
E_EXPORT_BASIC_AUTH_INCOMPLETE = "channels_ws_metrics.E016"
E_EXPORT_NO_RULE = "channels_ws_metrics.E017"
E_MESSAGE_FLUSH_INTERVAL = "channels_ws_metrics.E018"

_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

#: Keys of ``EXPORT``. Secrets are never values here, only the names of the
#: environment variables that hold them.
EXPORT_KEYS = (
    "ALLOWED_NETWORKS",
    "TRUSTED_PROXIES",
    "BEARER_TOKEN_ENV",
    "BASIC_AUTH_USERNAME",
    "BASIC_AUTH_PASSWORD_ENV",
)

#: Keys that would put a secret in plain text in ``EXPORT``, and the key to use instead.
EXPORT_PLAINTEXT_SECRET_KEYS = {
    "BEARER_TOKEN": "BEARER_TOKEN_ENV",
    "TOKEN": "BEARER_TOKEN_ENV",
    "PASSWORD": "BASIC_AUTH_PASSWORD_ENV",
    "BASIC_AUTH_PASSWORD": "BASIC_AUTH_PASSWORD_ENV",
}


@dataclass(frozen=True)
class WebSocketMetricsSettings:
    """Validated values of ``CHANNELS_WS_METRICS`` with defaults filled in."""

    namespace: str = ""
    connection_duration_buckets: tuple[float, ...] = DEFAULT_CONNECTION_DURATION_BUCKETS
    handshake_duration_buckets: tuple[float, ...] = DEFAULT_HANDSHAKE_DURATION_BUCKETS
    message_metrics: bool = True
    message_flush_interval: float = DEFAULT_MESSAGE_FLUSH_INTERVAL
    message_size_histogram: bool = False
    message_size_buckets: tuple[float, ...] = DEFAULT_MESSAGE_SIZE_BUCKETS
    close_codes: tuple[int, ...] = ()
    skip_paths: tuple[re.Pattern[str], ...] = ()
    #: (label name, callable) pairs, in the order of the setting.
    extra_labels: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = ()
    max_label_values: int = DEFAULT_MAX_LABEL_VALUES
    #: For error messages: where each callable in ``extra_labels`` came from.
    extra_label_paths: Mapping[str, str] = field(default_factory=dict)
    #: Rules of the guarded ``views.metrics``, or ``None`` when ``EXPORT`` is absent.
    export: ExportRules | None = None


def _key(key: str) -> str:
    return f"{SETTING_NAME}[{key!r}]"


def _type_error(key: str, expected: str, value: Any, hint: str) -> CheckMessage:
    return Error(
        f"{_key(key)} must be {expected}, got {type(value).__name__} {value!r}.",
        hint=hint,
        id=E_WRONG_TYPE,
    )


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        # An int too large for a float, such as 10**400, is no usable number.
        return not math.isnan(float(value))
    except OverflowError:
        return False


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


# -- one validator per key ----------------------------------------------------


def _validate_namespace(name: str, value: Any) -> list[CheckMessage]:
    if not isinstance(value, str):
        return [
            Error(
                f"{name} must be a string, got {type(value).__name__} {value!r}.",
                hint="Use letters, digits and underscores, or '' for no prefix.",
                id=E_WRONG_TYPE,
            )
        ]
    if value and not _NAME_RE.fullmatch(value):
        return [
            Error(
                f"{name} is not a valid Prometheus metric name prefix: {value!r}.",
                hint="Use letters, digits and underscores, not starting with a digit, "
                "or '' for no prefix.",
                id=E_INVALID_NAMESPACE,
            )
        ]
    return []


def _validate_buckets(key: str, value: Any, unit: str, example: str) -> list[CheckMessage]:
    if not _is_sequence(value) or not value or not all(_is_number(bound) for bound in value):
        return [
            _type_error(
                key,
                "a non-empty list or tuple of numbers",
                value,
                f"Give the upper bounds in {unit}, for example {example}; "
                "the +Inf bucket is added for you.",
            )
        ]
    increasing = all(later > earlier for earlier, later in zip(value, value[1:]))
    finite = all(math.isfinite(bound) for bound in value)
    if not increasing or not finite or value[0] <= 0:
        suggestion = sorted({bound for bound in value if bound > 0 and math.isfinite(bound)})
        return [
            Error(
                f"{_key(key)} must be finite, positive and strictly increasing, got {value!r}.",
                hint="Sort the bounds and drop duplicates, values <= 0 and infinities "
                f"(+Inf is added for you): {suggestion!r}.",
                id=E_BUCKETS_VALUES,
            )
        ]
    return []


def _validate_bool(key: str, value: Any) -> list[CheckMessage]:
    if isinstance(value, bool):
        return []
    return [_type_error(key, "True or False", value, f"Set {_key(key)} = True or False.")]


def _validate_message_flush_interval(value: Any) -> list[CheckMessage]:
    key = "MESSAGE_FLUSH_INTERVAL"
    if not _is_number(value):
        return [
            _type_error(
                key,
                "a number of seconds",
                value,
                f"Set {_key(key)} to a number of seconds, for example {DEFAULT_MESSAGE_FLUSH_INTERVAL}.",
            )
        ]
    if not MIN_MESSAGE_FLUSH_INTERVAL <= value <= MAX_MESSAGE_FLUSH_INTERVAL:
        return [
            Error(
                f"{_key(key)} must be between {MIN_MESSAGE_FLUSH_INTERVAL} and "
                f"{MAX_MESSAGE_FLUSH_INTERVAL} seconds, got {value!r}.",
                hint=f"Set it to how far behind, in seconds, the message and byte counters "
                f"may be in multiprocess mode (default {DEFAULT_MESSAGE_FLUSH_INTERVAL}).",
                id=E_MESSAGE_FLUSH_INTERVAL,
            )
        ]
    return []


def _validate_close_codes(value: Any) -> list[CheckMessage]:
    key = "CLOSE_CODES"
    if not _is_sequence(value) or not all(
        isinstance(code, int) and not isinstance(code, bool) for code in value
    ):
        return [
            _type_error(
                key,
                "a list or tuple of integers",
                value,
                "List the application close codes to keep in the code label, for example [4001, 4403].",
            )
        ]
    outside = [code for code in value if not 3000 <= code <= 4999]
    if outside:
        return [
            Error(
                f"{_key(key)} contains codes outside 3000-4999: {outside!r}.",
                hint="Remove them: only application codes (3000-4999) can be listed. "
                "Codes 1000-1015 are always kept, and any other code is labelled 'other'.",
                id=E_CLOSE_CODE_RANGE,
            )
        ]
    return []


def _validate_skip_paths(value: Any) -> list[CheckMessage]:
    key = "SKIP_PATHS"
    if not _is_sequence(value) or not all(isinstance(pattern, str) for pattern in value):
        return [
            _type_error(
                key,
                "a list or tuple of regular expression strings",
                value,
                r"Give patterns that fully match scope['path'], for example [r'/ws/health/'].",
            )
        ]
    errors: list[CheckMessage] = []
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            errors.append(
                Error(
                    f"{_key(key)} contains {pattern!r}, which is not a valid regular expression: {exc}.",
                    hint="Fix the pattern; it must compile with Python's re module.",
                    id=E_SKIP_PATH_REGEX,
                )
            )
    return errors


def _validate_extra_labels(value: Any) -> list[CheckMessage]:
    key = "EXTRA_LABELS"
    if not isinstance(value, Mapping):
        return [
            _type_error(
                key,
                "a dict of label name to dotted path",
                value,
                "For example {'tenant': 'myproject.metrics.tenant_label'}, where the "
                "callable takes the connection scope and returns a str.",
            )
        ]
    errors: list[CheckMessage] = []
    for name, path in value.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.startswith("__"):
            errors.append(
                Error(
                    f"{_key(key)} has an invalid label name {name!r}.",
                    hint="Use letters, digits and underscores, not starting with a digit "
                    "or with '__' (reserved by Prometheus).",
                    id=E_LABEL_NAME_INVALID,
                )
            )
        elif name in RESERVED_LABEL_NAMES:
            errors.append(
                Error(
                    f"{_key(key)} uses the reserved label name {name!r}.",
                    hint="Rename the label; these names are taken: "
                    + ", ".join(sorted(RESERVED_LABEL_NAMES))
                    + ".",
                    id=E_LABEL_NAME_RESERVED,
                )
            )
        errors += _validate_label_callable(name, path)
    return errors


def _validate_label_callable(name: Any, path: Any) -> list[CheckMessage]:
    where = f"{_key('EXTRA_LABELS')}[{name!r}]"
    if not isinstance(path, str):
        return [
            _type_error(
                "EXTRA_LABELS",
                "a dict whose values are dotted paths (str)",
                path,
                f"Set {where} to the dotted path of a callable, for example "
                "'myproject.metrics.tenant_label'.",
            )
        ]
    try:
        target = import_string(path)
    except ImportError as exc:
        return [
            Error(
                f"{where} = {path!r} cannot be imported: {exc}.",
                hint="Check the module and attribute names in the dotted path.",
                id=E_LABEL_IMPORT,
            )
        ]
    if not callable(target):
        return [
            Error(
                f"{where} = {path!r} is not callable: it is {type(target).__name__} {target!r}.",
                hint="Point to a function that takes the connection scope and returns a str.",
                id=E_LABEL_NOT_CALLABLE,
            )
        ]
    return []


def _validate_max_label_values(value: Any) -> list[CheckMessage]:
    key = "MAX_LABEL_VALUES"
    if not isinstance(value, int) or isinstance(value, bool):
        return [_type_error(key, "an integer", value, f"Set {_key(key)} to a positive integer, for example 50.")]
    if value < 1:
        return [
            Error(
                f"{_key(key)} must be at least 1, got {value!r}.",
                hint=f"Set it to the number of distinct values each extra label may take "
                f"in one process (default {DEFAULT_MAX_LABEL_VALUES}).",
                id=E_MAX_LABEL_VALUES,
            )
        ]
    return []


_ENV_EXAMPLES = {"BEARER_TOKEN_ENV": "METRICS_TOKEN", "BASIC_AUTH_PASSWORD_ENV": "METRICS_PASSWORD"}


def _export_key(key: str) -> str:
    return f"{_key('EXPORT')}[{key!r}]"


def _validate_export(value: Any) -> list[CheckMessage]:
    if not isinstance(value, Mapping):
        return [
            _type_error(
                "EXPORT",
                "a dict of export rules",
                value,
                "For example {'ALLOWED_NETWORKS': ['127.0.0.0/8', '::1/128']}, or remove "
                "EXPORT if channels_ws_metrics.views.metrics is not routed.",
            )
        ]

    errors: list[CheckMessage] = []
    # An unknown or plain-text key may be the rule the user meant to set, so
    # "no rule" would then be a misleading second error.
    misplaced_rule = False
    for key, rule in value.items():
        replacement = EXPORT_PLAINTEXT_SECRET_KEYS.get(key.upper()) if isinstance(key, str) else None
        if replacement is not None:
            misplaced_rule = True
            errors.append(_plaintext_secret_error(key, replacement))
        elif key not in EXPORT_KEYS:
            misplaced_rule = True
            errors.append(_unknown_export_key_error(key))
        elif key in ("ALLOWED_NETWORKS", "TRUSTED_PROXIES"):
            errors += _validate_networks(key, rule)
        elif key == "BASIC_AUTH_USERNAME":
            errors += _validate_basic_auth_username(rule)
        else:
            errors += _validate_env_name(key, rule)

    errors += _validate_basic_auth_pair(value)
    # A lone BASIC_AUTH_PASSWORD_ENV counts, because the pair check above already reports it.
    rule_keys = ("ALLOWED_NETWORKS", "BEARER_TOKEN_ENV", "BASIC_AUTH_USERNAME", "BASIC_AUTH_PASSWORD_ENV")
    has_rule = any(key in value for key in rule_keys)
    if not has_rule and not misplaced_rule:
        errors.append(
            Error(
                f"{_key('EXPORT')} sets no rule, got {dict(value)!r}. The guarded view "
                "would admit no request.",
                hint="Set ALLOWED_NETWORKS, BEARER_TOKEN_ENV, or BASIC_AUTH_USERNAME with "
                "BASIC_AUTH_PASSWORD_ENV. Remove EXPORT if the guarded view is not routed.",
                id=E_EXPORT_NO_RULE,
            )
        )
    return errors


def _plaintext_secret_error(key: str, replacement: str) -> CheckMessage:
    # The value is the secret itself, so it stays out of the message, which
    # ends up in terminals and CI logs.
    return Error(
        f"{_key('EXPORT')} has the key {key!r}, which would keep a secret in plain text "
        "in the settings (value not shown).",
        hint=f"Remove it, put the secret in an environment variable and set "
        f"{_export_key(replacement)} to that variable's name, for example {_ENV_EXAMPLES[replacement]!r}.",
        id=E_EXPORT_PLAINTEXT_SECRET,
    )


def _unknown_export_key_error(key: Any) -> CheckMessage:
    close = difflib.get_close_matches(key, EXPORT_KEYS, n=1) if isinstance(key, str) else []
    if close:
        hint = f"Did you mean {close[0]!r}?"
    else:
        hint = "Valid keys are: " + ", ".join(EXPORT_KEYS) + "."
    return Error(f"{_key('EXPORT')} has an unknown key {key!r}.", hint=hint, id=E_UNKNOWN_KEY)


def _validate_networks(key: str, value: Any) -> list[CheckMessage]:
    where = _export_key(key)
    # An empty ALLOWED_NETWORKS would reject every request, but TRUSTED_PROXIES may be empty.
    must_fill = key == "ALLOWED_NETWORKS"
    strings = _is_sequence(value) and all(isinstance(network, str) for network in value)
    if not strings or (must_fill and not value):
        expected = "a non-empty list or tuple of strings" if must_fill else "a list or tuple of strings"
        return [
            Error(
                f"{where} must be {expected}, got {type(value).__name__} {value!r}.",
                hint="List networks in CIDR notation, for example ['127.0.0.0/8', '::1/128'].",
                id=E_WRONG_TYPE,
            )
        ]
    errors: list[CheckMessage] = []
    for network in value:
        try:
            ipaddress.ip_network(network, strict=True)
        except ValueError as exc:
            errors.append(
                Error(
                    f"{where} contains {network!r}, which is not a valid IP network: {exc}.",
                    hint="Write an IPv4 or IPv6 network in CIDR notation with the host bits "
                    "set to zero, such as '10.0.0.0/8' or 'fd00::/8'. A single address "
                    "such as '192.0.2.7' means that address alone.",
                    id=E_EXPORT_INVALID_NETWORK,
                )
            )
    return errors


def _validate_env_name(key: str, value: Any) -> list[CheckMessage]:
    # The value is not shown: a secret pasted here in place of a variable
    # name would otherwise be printed.
    where = _export_key(key)
    example = _ENV_EXAMPLES[key]
    if not isinstance(value, str):
        return [
            Error(
                f"{where} must be the name of an environment variable (str), got {type(value).__name__} "
                "(value not shown).",
                hint=f"Set it to the name of the variable that holds the secret, for example {example!r}.",
                id=E_WRONG_TYPE,
            )
        ]
    if not _NAME_RE.fullmatch(value):
        return [
            Error(
                f"{where} is not a valid environment variable name (value not shown).",
                hint="Use letters, digits and underscores, not starting with a digit, for "
                f"example {example!r}. Put the secret itself in that variable, not in the settings.",
                id=E_EXPORT_INVALID_ENV_NAME,
            )
        ]
    return []


def _validate_basic_auth_username(value: Any) -> list[CheckMessage]:
    if isinstance(value, str) and value and ":" not in value:
        return []
    return [
        Error(
            f"{_export_key('BASIC_AUTH_USERNAME')} must be a non-empty string without ':', "
            f"got {type(value).__name__} {value!r}.",
            hint="Basic authentication separates the username from the password with ':', "
            "so the username cannot contain one. For example 'prometheus'.",
            id=E_WRONG_TYPE,
        )
    ]


def _validate_basic_auth_pair(value: Mapping[Any, Any]) -> list[CheckMessage]:
    if "BASIC_AUTH_USERNAME" in value and "BASIC_AUTH_PASSWORD_ENV" not in value:
        return [
            Error(
                f"{_export_key('BASIC_AUTH_USERNAME')} = {value['BASIC_AUTH_USERNAME']!r} is set "
                "without BASIC_AUTH_PASSWORD_ENV.",
                hint=f"Set {_export_key('BASIC_AUTH_PASSWORD_ENV')} to the name of the environment "
                "variable that holds the password, or remove BASIC_AUTH_USERNAME.",
                id=E_EXPORT_BASIC_AUTH_INCOMPLETE,
            )
        ]
    if "BASIC_AUTH_PASSWORD_ENV" in value and "BASIC_AUTH_USERNAME" not in value:
        return [
            Error(
                f"{_export_key('BASIC_AUTH_PASSWORD_ENV')} is set without BASIC_AUTH_USERNAME.",
                hint=f"Set {_export_key('BASIC_AUTH_USERNAME')} to the username the scraper "
                "sends, for example 'prometheus', or remove BASIC_AUTH_PASSWORD_ENV.",
                id=E_EXPORT_BASIC_AUTH_INCOMPLETE,
            )
        ]
    return []


_VALIDATORS: dict[str, Callable[[Any], list[CheckMessage]]] = {
    "NAMESPACE": lambda value: _validate_namespace(_key("NAMESPACE"), value),
    "CONNECTION_DURATION_BUCKETS": lambda value: _validate_buckets(
        "CONNECTION_DURATION_BUCKETS", value, "seconds", "[1, 60, 3600]"
    ),
    "HANDSHAKE_DURATION_BUCKETS": lambda value: _validate_buckets(
        "HANDSHAKE_DURATION_BUCKETS", value, "seconds", "[0.01, 0.1, 1]"
    ),
    "MESSAGE_METRICS": lambda value: _validate_bool("MESSAGE_METRICS", value),
    "MESSAGE_FLUSH_INTERVAL": _validate_message_flush_interval,
    "MESSAGE_SIZE_HISTOGRAM": lambda value: _validate_bool("MESSAGE_SIZE_HISTOGRAM", value),
    "MESSAGE_SIZE_BUCKETS": lambda value: _validate_buckets(
        "MESSAGE_SIZE_BUCKETS", value, "bytes", "[256, 4096, 65536]"
    ),
    "CLOSE_CODES": _validate_close_codes,
    "SKIP_PATHS": _validate_skip_paths,
    "EXTRA_LABELS": _validate_extra_labels,
    "MAX_LABEL_VALUES": _validate_max_label_values,
    "EXPORT": _validate_export,
}

KNOWN_KEYS = tuple(_VALIDATORS)


def validate(raw: Any, default_namespace: Any = "") -> list[CheckMessage]:
    """Return a check message for each mistake in a ``CHANNELS_WS_METRICS`` value."""
    if not isinstance(raw, Mapping):
        return [
            Error(
                f"{SETTING_NAME} must be a dict, got {type(raw).__name__} {raw!r}.",
                hint=f"Set {SETTING_NAME} = {{}} to use the defaults, "
                "or a dict of the keys to change.",
                id=E_NOT_A_DICT,
            )
        ]

    errors: list[CheckMessage] = []
    for key, value in raw.items():
        validator = _VALIDATORS.get(key)
        if validator is None:
            errors.append(_unknown_key_error(key))
        else:
            errors += validator(value)
    if "NAMESPACE" not in raw:
        errors += _validate_namespace("PROMETHEUS_METRIC_NAMESPACE", default_namespace)
    return errors


def _unknown_key_error(key: Any) -> CheckMessage:
    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1) if isinstance(key, str) else []
    if close:
        hint = f"Did you mean {close[0]!r}?"
    else:
        hint = "Valid keys are: " + ", ".join(KNOWN_KEYS) + "."
    return Error(f"{SETTING_NAME} has an unknown key {key!r}.", hint=hint, id=E_UNKNOWN_KEY)


def build(raw: Mapping[str, Any], default_namespace: str = "") -> WebSocketMetricsSettings:
    """Build settings from a value that ``validate()`` accepted."""
    defaults = WebSocketMetricsSettings()
    extra_label_paths = dict(raw.get("EXTRA_LABELS", {}))
    return WebSocketMetricsSettings(
        namespace=raw.get("NAMESPACE", default_namespace),
        connection_duration_buckets=tuple(
            raw.get("CONNECTION_DURATION_BUCKETS", defaults.connection_duration_buckets)
        ),
        handshake_duration_buckets=tuple(
            raw.get("HANDSHAKE_DURATION_BUCKETS", defaults.handshake_duration_buckets)
        ),
        message_metrics=raw.get("MESSAGE_METRICS", defaults.message_metrics),
        message_flush_interval=float(raw.get("MESSAGE_FLUSH_INTERVAL", defaults.message_flush_interval)),
        message_size_histogram=raw.get("MESSAGE_SIZE_HISTOGRAM", defaults.message_size_histogram),
        message_size_buckets=tuple(raw.get("MESSAGE_SIZE_BUCKETS", defaults.message_size_buckets)),
        close_codes=tuple(raw.get("CLOSE_CODES", ())),
        skip_paths=tuple(re.compile(pattern) for pattern in raw.get("SKIP_PATHS", ())),
        extra_labels=tuple((name, import_string(path)) for name, path in extra_label_paths.items()),
        max_label_values=raw.get("MAX_LABEL_VALUES", defaults.max_label_values),
        extra_label_paths=extra_label_paths,
        export=ExportRules.from_setting(raw["EXPORT"]) if "EXPORT" in raw else None,
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
            raise ImproperlyConfigured(
                "\n".join(f"{error.id}: {error.msg} HINT: {error.hint}" for error in errors)
            )
        _cached = build(raw, default_namespace)
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
