from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class ChannelsWsMetricsConfig(AppConfig):
    name = "channels_ws_metrics"
    verbose_name = "Channels WebSocket metrics"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .metrics import get_metrics
        from .multiprocess import start_housekeeping

        # First, because prometheus_client would read a stale live-gauge file
        # named with this process's id back as its start value.
        start_housekeeping()

        # Register the families now so that in single-process mode /metrics
        # lists them before the first connection; multiprocess mode exports
        # only what some process has written. Invalid settings are left to
        # the system checks, which report every mistake, not a traceback.
        try:
            get_metrics()
        except ImproperlyConfigured:
            pass
