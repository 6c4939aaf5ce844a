"""Prometheus metrics for Django Channels WebSocket connections."""

from .middleware import WebSocketMetricsMiddleware

__all__ = ["WebSocketMetricsMiddleware"]
__version__ = "0.1.0"
