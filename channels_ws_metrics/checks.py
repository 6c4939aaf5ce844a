"""System checks for the ``CHANNELS_WS_METRICS`` setting and its surroundings."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register
from django.urls import URLPattern, URLResolver, get_resolver
from django_prometheus.exports import ExportToDjangoView

from . import conf
from .views import metrics

W_NO_DJANGO_PROMETHEUS = "channels_ws_metrics.W001"
W_MULTIPROC_DIR_UNUSABLE = "channels_ws_metrics.W002"
W_EXPORT_MISSING = "channels_ws_metrics.W003"
W_UNGUARDED_EXPORT_ROUTED = "channels_ws_metrics.W004"
W_HEADER_SPOOFING_DJANGO = "channels_ws_metrics.W005"

# Django releases that fixed CVE-2026-3902, per release series: before them,
# ASGIRequest merged a client's X_Forwarded_For header into
# HTTP_X_FORWARDED_FOR, so a client could choose the address that the
# guarded view checks.
_HEADER_SPOOFING_FIXED = {(4, 2): (4, 2, 30), (5, 2): (5, 2, 13), (6, 0): (6, 0, 4)}


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    raw, default_namespace = conf.read_raw()
    return conf.validate(raw, default_namespace)


@register(Tags.compatibility)
def check_django_prometheus_installed(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if apps.is_installed("django_prometheus"):
        return []
    return [
        Warning(
            "'django_prometheus' is not in INSTALLED_APPS, so nothing exports the "
            "WebSocket metrics on /metrics.",
            hint="Add 'django_prometheus' to INSTALLED_APPS and "
            "path('', include('django_prometheus.urls')) to your URLconf.",
            id=W_NO_DJANGO_PROMETHEUS,
        )
    ]


@register(Tags.compatibility)
def check_multiprocess_directory(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    # prometheus_client reads the environment variable, not a Django setting.
    for variable in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        directory = os.environ.get(variable)
        if directory is not None:
            break
    else:
        return []

    if not os.path.isdir(directory):
        problem = "does not exist or is not a directory"
    elif not os.access(directory, os.W_OK | os.X_OK):
        problem = "is not writable by this process"
    else:
        return []
    return [
        Warning(
            f"The environment variable {variable}={directory!r} {problem}, so "
            "prometheus_client cannot store metrics in multiprocess mode.",
            hint=f"Create the directory (mkdir -p {directory}) and make it writable "
            f"by the server's user, or unset {variable} to run in single-process mode.",
            id=W_MULTIPROC_DIR_UNUSABLE,
        )
    ]


@register(Tags.security, Tags.urls)
def check_export_routing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    # Django's own URL checks report a missing or broken URLconf.
    if not getattr(settings, "ROOT_URLCONF", None):
        return []
    routes = list(_routed_views(get_resolver().url_patterns))
    guarded = [route for route, view in routes if view is metrics]
    unguarded = [route for route, view in routes if view is ExportToDjangoView]
    raw, _ = conf.read_raw()
    has_export = isinstance(raw, Mapping) and "EXPORT" in raw

    warnings: list[CheckMessage] = []
    if guarded and not has_export and isinstance(raw, Mapping):
        warnings.append(
            Warning(
                f"channels_ws_metrics.views.metrics is routed at {guarded[0]!r}, but "
                f"{conf.SETTING_NAME}['EXPORT'] is not set, so the view rejects every request with 403.",
                hint=f"Set {conf.SETTING_NAME}['EXPORT'], for example "
                "{'ALLOWED_NETWORKS': ['127.0.0.0/8', '::1/128']}.",
                id=W_EXPORT_MISSING,
            )
        )
    if unguarded and (guarded or has_export):
        warnings.append(
            Warning(
                f"django_prometheus's ExportToDjangoView is routed at {unguarded[0]!r}, so the "
                f"metrics can be read there without the {conf.SETTING_NAME}['EXPORT'] rules.",
                hint="Replace path('', include('django_prometheus.urls')) with "
                "path('metrics', channels_ws_metrics.views.metrics) in your URLconf.",
                id=W_UNGUARDED_EXPORT_ROUTED,
            )
        )
    return warnings


def _routed_views(
    patterns: list[URLPattern | URLResolver], prefix: str = ""
) -> Iterator[tuple[str, Callable[..., Any]]]:
    """Yield (route, view) for every view in ``patterns`` and the URLconfs they include."""
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _routed_views(entry.url_patterns, route)
        else:
            yield route, entry.callback


def _merges_underscore_headers(version: tuple[Any, ...]) -> bool:
    fixed = _HEADER_SPOOFING_FIXED.get(tuple(version[:2]))
    if fixed is not None:
        return tuple(version[:3]) < fixed
    # Series before 6.1 without a fix are unsupported and were not evaluated.
    return tuple(version[:2]) < (6, 1)


@register(Tags.security)
def check_header_spoofing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    import django

    try:
        rules = conf.get_settings().export
    except Exception:
        return []  # invalid settings are reported by check_settings
    if rules is None or not rules.trusted_proxies or not _merges_underscore_headers(django.VERSION):
        return []
    return [
        Warning(
            f"Django {django.get_version()} lets a client spoof X-Forwarded-For under ASGI "
            "(CVE-2026-3902), and CHANNELS_WS_METRICS['EXPORT']['TRUSTED_PROXIES'] makes the "
            "guarded metrics view trust that header.",
            hint="Upgrade Django to 4.2.30, 5.2.13, 6.0.4 or later, or make every trusted proxy "
            "drop request headers whose names contain underscores (nginx does by default).",
            id=W_HEADER_SPOOFING_DJANGO,
        )
    ]
