from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class ChannelsWsMetricsConfig(AppConfig):
    name = "channels_ws_metrics"
    verbose_name = "Channels WebSocket metrics"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .metrics import get_metrics

        # Register the families now so /metrics lists them before the first
        # connection. Invalid settings are left to the system checks, which
        # report every mistake instead of a traceback for the first one.
        try:
            get_metrics()
        except ImproperlyConfigured:
            pass
