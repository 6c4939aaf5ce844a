"""In-process cost of the middleware per echoed message and per connection.

Drives a minimal ASGI echo application behind a Channels ``URLRouter`` with
scripted ``receive`` and a no-op ``send``, bare and wrapped, and times the
least work the metrics need (pre-bound prometheus_client children) in the
same run. Prints one JSON object per variant; ``run_all.py`` collects them.

    python benchmarks/inprocess.py --variant default
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import sys
import tempfile
import time

VARIANTS = {
    "default": {},
    "message_metrics_off": {"MESSAGE_METRICS": False},
    "message_size_histogram": {"MESSAGE_SIZE_HISTOGRAM": True},
    "multiprocess": {},
}


def configure(variant: str) -> None:
    if variant == "multiprocess":
        # prometheus_client picks its value class when it is first imported.
        directory = tempfile.mkdtemp(prefix="ws-metrics-bench-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["channels", "channels_ws_metrics"],
        CHANNELS_WS_METRICS=VARIANTS[variant],
        USE_TZ=True,
    )
    django.setup()


ACCEPT = {"type": "websocket.accept"}


async def echo_app(scope, receive, send):
    await receive()
    await send(ACCEPT)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text")})


async def run_connection(application, scope, messages):
    iterator = iter(messages)

    async def receive():
        return next(iterator)

    async def send(message):
        pass

    await application(scope, receive, send)


def time_messages(application, count: int) -> float:
    """Return seconds per echoed message over one connection of ``count`` messages."""
    frame = {"type": "websocket.receive", "text": "hello, world"}
    messages = [{"type": "websocket.connect"}] + [frame] * count + [{"type": "websocket.disconnect", "code": 1000}]
    scope = {"type": "websocket", "path": "/ws/echo/", "query_string": b"", "headers": []}
    loop = asyncio.new_event_loop()
    try:
        started = time.process_time()
        loop.run_until_complete(run_connection(application, scope, messages))
        return (time.process_time() - started) / count
    finally:
        loop.close()


def time_connections(application, count: int) -> float:
    """Return seconds per connection (connect, accept, disconnect)."""
    messages = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    scope = {"type": "websocket", "path": "/ws/echo/", "query_string": b"", "headers": []}

    async def many():
        for _ in range(count):
            await run_connection(application, scope, messages)

    loop = asyncio.new_event_loop()
    try:
        started = time.process_time()
        loop.run_until_complete(many())
        return (time.process_time() - started) / count
    finally:
        loop.close()


def minimal_work(metrics, variant: str):
    """Return functions doing the least metric work of one message and one connection."""
    route = metrics.for_route("ws/echo/")
    registry_children = route.owner
    received = registry_children.messages_received_total
    if received is None:
        received = registry_children.connections_total  # no message metrics: time a counter anyway
    children = [received.labels("ws/echo/") for _ in range(4)]
    first, second, third, fourth = (child.inc for child in children)
    gauge = registry_children.connections_active.labels("ws/echo/")
    counters = [registry_children.connections_total.labels("ws/echo/").inc] * 3
    histogram = registry_children.connection_duration.labels("ws/echo/").observe

    def per_message():
        first()
        second(12)
        third()
        fourth(12)

    def per_connection():
        gauge.inc()
        counters[0]()
        counters[1]()
        counters[2]()
        histogram(0.01)
        histogram(0.01)
        gauge.dec()

    if variant == "message_metrics_off":
        def per_message():  # noqa: F811 (the least work with no message metrics is none)
            pass

    if variant == "message_size_histogram":
        size = registry_children.message_size.labels("ws/echo/", "received").observe

        def per_message():  # noqa: F811 (the histogram adds one observation each way)
            first()
            second(12)
            size(12)
            third()
            fourth(12)
            size(12)

    return per_message, per_connection


def time_function(function, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        function()
    return (time.process_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the median is reported")
    parser.add_argument("--messages", type=int, default=20_000, help="echoed messages per round")
    parser.add_argument("--connections", type=int, default=5_000, help="connections per round")
    arguments = parser.parse_args()

    configure(arguments.variant)
    from channels.routing import URLRouter
    from django.urls import path

    from channels_ws_metrics import WebSocketMetricsMiddleware
    from channels_ws_metrics.metrics import get_metrics

    bare = URLRouter([path("ws/echo/", echo_app)])
    wrapped = WebSocketMetricsMiddleware(bare)
    metrics = get_metrics()
    per_message, per_connection = minimal_work(metrics, arguments.variant)

    results: dict[str, list[float]] = {key: [] for key in ("message_bare", "message_wrapped", "message_minimal", "connection_bare", "connection_wrapped", "connection_minimal")}
    time_messages(wrapped, 1000)  # warm up
    time_connections(wrapped, 500)
    for _ in range(arguments.rounds):
        # Alternate within a round so that drift in machine speed hits all.
        results["message_bare"].append(time_messages(bare, arguments.messages))
        results["message_wrapped"].append(time_messages(wrapped, arguments.messages))
        results["message_minimal"].append(time_function(per_message, arguments.messages))
        results["connection_bare"].append(time_connections(bare, arguments.connections))
        results["connection_wrapped"].append(time_connections(wrapped, arguments.connections))
        results["connection_minimal"].append(time_function(per_connection, arguments.connections))

    # The fastest round is the one least disturbed by other processes.
    fastest = {key: min(values) for key, values in results.items()}
    report = {"variant": arguments.variant, **{key: value * 1e6 for key, value in fastest.items()}}
    for unit in ("message", "connection"):
        minimal = fastest[f"{unit}_minimal"]
        overhead = fastest[f"{unit}_wrapped"] - fastest[f"{unit}_bare"]
        report[f"{unit}_ratio"] = overhead / minimal if minimal > 0 else None
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
