"""ASGI entry point: ``daphne example_project.asgi:application``."""

import os

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

# get_asgi_application() calls django.setup(), which must run before the
# imports below so that they may use models and settings at import time.
django_asgi_app = get_asgi_application()

from channels_ws_metrics import WebSocketMetricsMiddleware  # noqa: E402

from example_project.chat.routing import websocket_urlpatterns  # noqa: E402

# The metrics middleware is outermost, so handshakes that the origin check
# or the auth middleware reject are counted as well.
application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": WebSocketMetricsMiddleware(
            AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
            )
        ),
    }
)
