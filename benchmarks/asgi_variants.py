"""The example project's ASGI application in three variants, for the benchmark servers.

Each server process serves one of them, named on its command line with
``benchmarks/`` on ``PYTHONPATH``:

    uvicorn asgi_variants:bare_application
    daphne asgi_variants:app_application

- ``bare_application``: the example project's websocket stack with no
  metrics, the floor every other variant is compared with.
- ``peer_application``: the same stack inside ``PeerMetricsMiddleware``, the
  kind of metrics middleware other projects ship.
- ``app_application``: the same stack inside ``WebSocketMetricsMiddleware``,
  outermost, as in ``example_project/asgi.py``.

All three share the example project's HTTP application and settings.
"""

from __future__ import annotations

import os
from time import perf_counter
from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

# get_asgi_application() calls django.setup(), which must come before the
# imports that touch models or settings.
django_asgi_app = get_asgi_application()

from prometheus_client import Counter, Gauge, Histogram  # noqa: E402

from channels_ws_metrics import WebSocketMetricsMiddleware  # noqa: E402
from example_project.chat.routing import websocket_urlpatterns  # noqa: E402

PEER_ACTIVE = Gauge("peer_websocket_connections_active", "Open WebSocket connections.")
PEER_CONNECTIONS = Counter("peer_websocket_connections", "Accepted WebSocket connections.")
PEER_DURATION = Histogram("peer_websocket_connection_duration_seconds", "WebSocket connection lifetime.")


class PeerMetricsMiddleware:
    """Record one gauge, one counter and one histogram per connection, without labels.

    A stand-in for the metrics middleware that other projects ship, so the
    end-to-end benchmark compares this app with more than an empty stack.
    It wraps ``send`` to see the accept, as such middleware must, and
    records nothing per message.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)

        accepted_at: float | None = None

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal accepted_at
            await send(message)
            if message["type"] == "websocket.accept" and accepted_at is None:
                accepted_at = perf_counter()
                PEER_ACTIVE.inc()
                PEER_CONNECTIONS.inc()

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if accepted_at is not None:
                PEER_ACTIVE.dec()
                PEER_DURATION.observe(perf_counter() - accepted_at)


def websocket_stack() -> Any:
    """Build the example project's websocket branch without any metrics middleware."""
    return AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


bare_application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_stack()})

peer_application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": PeerMetricsMiddleware(websocket_stack())}
)

app_application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": WebSocketMetricsMiddleware(websocket_stack())}
)
