"""System checks for the ``CHANNELS_WS_METRICS`` setting and its surroundings."""

from __future__ import annotations

import os
from typing import Any

from django.apps import apps
from django.core.checks import CheckMessage, Tags, Warning, register

from . import conf

W_NO_DJANGO_PROMETHEUS = "channels_ws_metrics.W001"
W_MULTIPROC_DIR_UNUSABLE = "channels_ws_metrics.W002"


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
