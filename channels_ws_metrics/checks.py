"""System checks for the ``CHANNELS_WS_METRICS`` setting and its surroundings."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.checks import CheckMessage, Tags, Warning, register

from . import conf

W_NO_DJANGO_PROMETHEUS = "channels_ws_metrics.W001"


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
