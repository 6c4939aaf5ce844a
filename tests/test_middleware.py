from __future__ import annotations

import asyncio
import logging

import pytest
from channels.auth import AuthMiddlewareStack
from channels.security.websocket import OriginValidator
from channels.testing import WebsocketCommunicator

from channels_ws_metrics import WebSocketMetricsMiddleware
from channels_ws_metrics.middleware import SCOPE_KEY
from channels_ws_metrics.ratelimit import report_failure

from .asgi_apps import ScriptedApp, router

pytestmark = pytest.mark.asyncio

ACCEPT = {"type": "websocket.accept"}


def wrap(metrics, app=None):
    return WebSocketMetricsMiddleware(app if app is not None else router(), metrics=metrics)


async def drive(app, scope, inputs):
    """Run ``app`` on ``scope`` feeding ``inputs``, return what it sent."""
    queue: asyncio.Queue = asyncio.Queue()
    for message in inputs:
        queue.put_nowait(message)
    sent = []

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(scope, queue.get, send), timeout=5)
    return sent


# -- pass-through -------------------------------------------------------------


async def test_middleware_passes_other_scopes_untouched(metrics, registry):
    calls = []

    async def inner(scope, receive, send):
        calls.append((scope, receive, send))

    async def receive():
        return {}

    async def send(message):
        pass

    scope = {"type": "http", "path": "/ws/echo/"}
    await wrap(metrics, inner)(scope, receive, send)

    assert calls == [(scope, receive, send)]
    assert calls[0][0] is scope
    assert calls[0][1] is receive
    assert calls[0][2] is send
    assert scope == {"type": "http", "path": "/ws/echo/"}


async def test_middleware_records_no_series_for_other_scopes(metrics, registry):
    async def inner(scope, receive, send):
        pass

    await wrap(metrics, inner)({"type": "lifespan"}, None, None)

    assert [m.name for m in registry.collect() if m.samples] == []


# -- accepted connections -----------------------------------------------------


async def test_middleware_counts_open_connection(metrics, samples):
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/echo/")
    connected, _ = await communicator.connect()
    assert connected

    route = {"route": "ws/echo/"}
    assert samples("django_websocket_connections_active", **route) == 1.0
    assert samples("django_websocket_connections_total", **route) == 1.0
    assert samples("django_websocket_handshakes_total", outcome="accepted", **route) == 1.0
    assert samples("django_websocket_handshake_duration_seconds_count", outcome="accepted", **route) == 1.0

    await communicator.disconnect()
    assert samples("django_websocket_connections_active", **route) == 0.0
    assert samples("django_websocket_connections_total", **route) == 1.0


async def test_middleware_counts_text_and_bytes_messages(metrics, samples):
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/echo/")
    await communicator.connect()

    await communicator.send_to(text_data="héllo")
    assert await communicator.receive_from() == "héllo"
    await communicator.send_to(bytes_data=b"\x00\x01\x02")
    assert await communicator.receive_from() == b"\x00\x01\x02"
    await communicator.disconnect()

    route = {"route": "ws/echo/"}
    assert samples("django_websocket_messages_received_total", **route) == 2.0
    assert samples("django_websocket_messages_sent_total", **route) == 2.0
    assert samples("django_websocket_received_bytes_total", **route) == 9.0
    assert samples("django_websocket_sent_bytes_total", **route) == 9.0


async def test_middleware_counts_utf8_length_of_non_ascii_text(metrics, samples):
    app = ScriptedApp("receive", ACCEPT, "receive", {"type": "websocket.send", "text": "€😀"}, "receive")
    await drive(
        wrap(metrics, app),
        {"type": "websocket", "path": "/x/"},
        [
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "日本"},
            {"type": "websocket.disconnect", "code": 1000},
        ],
    )

    assert samples("django_websocket_received_bytes_total", route="<unrouted>") == 6.0
    assert samples("django_websocket_sent_bytes_total", route="<unrouted>") == 7.0


async def test_middleware_counts_none_payload_as_zero_bytes(metrics, samples):
    app = ScriptedApp("receive", ACCEPT, "receive", {"type": "websocket.send", "bytes": None, "text": None}, "receive")
    await drive(
        wrap(metrics, app),
        {"type": "websocket", "path": "/x/"},
        [
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "bytes": None, "text": None},
            {"type": "websocket.disconnect", "code": 1000},
        ],
    )

    assert samples("django_websocket_messages_received_total", route="<unrouted>") == 1.0
    assert samples("django_websocket_received_bytes_total", route="<unrouted>") == 0.0
    assert samples("django_websocket_messages_sent_total", route="<unrouted>") == 1.0
    assert samples("django_websocket_sent_bytes_total", route="<unrouted>") == 0.0


# -- close codes and initiators -----------------------------------------------


async def test_middleware_records_client_close(metrics, samples):
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/echo/")
    await communicator.connect()
    await communicator.disconnect(code=1001)

    assert samples("django_websocket_connections_closed_total", route="ws/echo/", code="1001", initiator="client") == 1.0
    assert samples("django_websocket_connection_duration_seconds_count", route="ws/echo/") == 1.0


async def test_middleware_records_disconnect_without_code_as_1005(metrics, samples):
    app = ScriptedApp("receive", ACCEPT, "receive")
    await drive(
        wrap(metrics, app),
        {"type": "websocket", "path": "/x/"},
        [{"type": "websocket.connect"}, {"type": "websocket.disconnect"}],
    )

    assert samples("django_websocket_connections_closed_total", route="<unrouted>", code="1005", initiator="client") == 1.0


async def test_middleware_records_server_close_with_app_code(metrics, samples):
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/close/")
    await communicator.connect()
    await communicator.send_to(text_data="4001")
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 4001}
    await communicator.disconnect(code=4001)

    assert samples("django_websocket_connections_closed_total", route="ws/close/", code="4xxx", initiator="server") == 1.0
    assert samples("django_websocket_connections_closed_total", route="ws/close/", code="4xxx", initiator="client") == 0.0


async def test_middleware_records_server_close_without_code_as_1000(metrics, samples):
    app = ScriptedApp("receive", ACCEPT, {"type": "websocket.close"})
    await drive(wrap(metrics, app), {"type": "websocket", "path": "/x/"}, [{"type": "websocket.connect"}])

    assert samples("django_websocket_connections_closed_total", route="<unrouted>", code="1000", initiator="server") == 1.0


async def test_middleware_keeps_first_close_when_client_closes_first(metrics, samples):
    app = ScriptedApp("receive", ACCEPT, "receive", {"type": "websocket.close", "code": 1000})
    await drive(
        wrap(metrics, app),
        {"type": "websocket", "path": "/x/"},
        [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1001}],
    )

    closed = "django_websocket_connections_closed_total"
    assert samples(closed, route="<unrouted>", code="1001", initiator="client") == 1.0
    assert samples(closed, route="<unrouted>", code="1000", initiator="server") == 0.0


async def test_middleware_records_app_returning_after_accept_as_1006(metrics, samples):
    app = ScriptedApp("receive", ACCEPT)
    await drive(wrap(metrics, app), {"type": "websocket", "path": "/x/"}, [{"type": "websocket.connect"}])

    assert samples("django_websocket_connections_closed_total", route="<unrouted>", code="1006", initiator="server") == 1.0
    assert samples("django_websocket_connections_active", route="<unrouted>") == 0.0


# -- exceptions ---------------------------------------------------------------


async def test_middleware_records_exception_after_accept(metrics, samples):
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/raise-after/")
    await communicator.connect()
    await communicator.send_to(text_data="boom")
    with pytest.raises(ValueError, match="bad message"):
        await communicator.wait()

    route = {"route": "ws/raise-after/"}
    assert samples("django_websocket_connections_closed_total", code="1011", initiator="server", **route) == 1.0
    assert samples("django_websocket_exceptions_total", exception_type="ValueError", **route) == 1.0
    assert samples("django_websocket_connections_active", **route) == 0.0


async def test_middleware_records_exception_before_accept(metrics, samples):
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/raise-before/")
    with pytest.raises(RuntimeError, match="connect failed"):
        await communicator.connect(timeout=0.1)

    route = {"route": "ws/raise-before/"}
    assert samples("django_websocket_handshakes_total", outcome="error", **route) == 1.0
    assert samples("django_websocket_handshake_duration_seconds_count", outcome="error", **route) == 1.0
    assert samples("django_websocket_exceptions_total", exception_type="RuntimeError", **route) == 1.0
    assert samples("django_websocket_connections_total", **route) == 0.0
    assert samples("django_websocket_connections_active", **route) == 0.0


async def test_middleware_records_cancelled_receive(metrics, samples):
    app = ScriptedApp("receive", ACCEPT, "receive")
    wrapped = wrap(metrics, app)
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait({"type": "websocket.connect"})
    accepted = asyncio.Event()

    async def receive():
        return await queue.get()

    async def send(message):
        accepted.set()

    # The first receive returns the connect message, the app accepts, then it
    # waits in receive() until the task is cancelled.
    app.steps = ("receive", ACCEPT, "receive")
    task = asyncio.ensure_future(wrapped({"type": "websocket", "path": "/x/"}, receive, send))
    await asyncio.wait_for(accepted.wait(), timeout=5)
    await asyncio.sleep(0)
    assert samples("django_websocket_connections_active", route="<unrouted>") == 1.0

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    route = {"route": "<unrouted>"}
    assert samples("django_websocket_connections_active", **route) == 0.0
    assert samples("django_websocket_connections_closed_total", code="1006", initiator="server", **route) == 1.0
    assert samples("django_websocket_connection_duration_seconds_count", **route) == 1.0
    assert samples("django_websocket_exceptions_total", exception_type="CancelledError", **route) == 0.0


async def test_middleware_records_cancel_before_decision_as_abandoned(metrics, samples):
    app = ScriptedApp("receive", ("sleep", 60))
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait({"type": "websocket.connect"})

    async def send(message):
        pass

    task = asyncio.ensure_future(wrap(metrics, app)({"type": "websocket", "path": "/x/"}, queue.get, send))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert samples("django_websocket_handshakes_total", route="<unrouted>", outcome="abandoned") == 1.0


async def test_middleware_records_send_accept_oserror_as_abandoned(metrics, samples):
    async def send(message):
        raise OSError("connection reset")

    app = ScriptedApp("receive", ACCEPT)
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait({"type": "websocket.connect"})

    with pytest.raises(OSError, match="connection reset"):
        await wrap(metrics, app)({"type": "websocket", "path": "/x/"}, queue.get, send)

    route = {"route": "<unrouted>"}
    assert samples("django_websocket_handshakes_total", outcome="accepted", **route) == 0.0
    assert samples("django_websocket_handshakes_total", outcome="abandoned", **route) == 1.0
    assert samples("django_websocket_connections_total", **route) == 0.0
    assert samples("django_websocket_connections_active", **route) == 0.0
    assert samples("django_websocket_exceptions_total", exception_type="OSError", **route) == 0.0


async def test_middleware_records_send_oserror_after_accept_as_client_close(metrics, samples):
    async def send(message):
        if message["type"] == "websocket.send":
            raise ConnectionResetError("client gone")

    app = ScriptedApp("receive", ACCEPT, {"type": "websocket.send", "text": "late"})
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait({"type": "websocket.connect"})

    with pytest.raises(ConnectionResetError):
        await wrap(metrics, app)({"type": "websocket", "path": "/x/"}, queue.get, send)

    route = {"route": "<unrouted>"}
    assert samples("django_websocket_connections_closed_total", code="1006", initiator="client", **route) == 1.0
    assert samples("django_websocket_messages_sent_total", **route) == 0.0
    assert samples("django_websocket_exceptions_total", exception_type="ConnectionResetError", **route) == 0.0
    assert samples("django_websocket_connections_active", **route) == 0.0


async def test_middleware_records_refused_close_as_exception(metrics, samples):
    async def send(message):
        if message["type"] == "websocket.close":
            raise ValueError("invalid close code 1005")

    app = ScriptedApp("receive", ACCEPT, {"type": "websocket.close", "code": 1005})
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait({"type": "websocket.connect"})

    with pytest.raises(ValueError, match="invalid close code"):
        await wrap(metrics, app)({"type": "websocket", "path": "/x/"}, queue.get, send)

    route = {"route": "<unrouted>"}
    assert samples("django_websocket_connections_closed_total", code="1011", initiator="server", **route) == 1.0
    assert samples("django_websocket_connections_closed_total", code="1005", initiator="server", **route) == 0.0
    assert samples("django_websocket_exceptions_total", exception_type="ValueError", **route) == 1.0


async def test_middleware_counts_other_send_errors_as_exceptions(metrics, samples):
    async def send(message):
        if message["type"] == "websocket.send":
            raise RuntimeError("Unexpected ASGI message")

    app = ScriptedApp("receive", ACCEPT, {"type": "websocket.send", "text": "x"})
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait({"type": "websocket.connect"})

    with pytest.raises(RuntimeError):
        await wrap(metrics, app)({"type": "websocket", "path": "/x/"}, queue.get, send)

    route = {"route": "<unrouted>"}
    assert samples("django_websocket_connections_closed_total", code="1011", initiator="server", **route) == 1.0
    assert samples("django_websocket_exceptions_total", exception_type="RuntimeError", **route) == 1.0


# -- handshake outcomes -------------------------------------------------------


async def test_middleware_records_close_before_accept_as_rejected(metrics, samples):
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/reject/")
    connected, code = await communicator.connect()
    assert (connected, code) == (False, 4403)
    await communicator.disconnect()

    route = {"route": "ws/reject/"}
    assert samples("django_websocket_handshakes_total", outcome="rejected", **route) == 1.0
    assert samples("django_websocket_handshake_duration_seconds_count", outcome="rejected", **route) == 1.0
    assert samples("django_websocket_connections_total", **route) == 0.0
    assert samples("django_websocket_connections_closed_total", code="4xxx", initiator="server", **route) == 0.0


async def test_middleware_passes_denial_response_unchanged(metrics, samples):
    start = {"type": "websocket.http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]}
    body = {"type": "websocket.http.response.body", "body": b"denied"}
    app = ScriptedApp("receive", start, body)

    sent = await drive(
        wrap(metrics, app),
        {"type": "websocket", "path": "/x/", "extensions": {"websocket.http.response": {}}},
        [{"type": "websocket.connect"}],
    )

    assert sent == [start, body]
    assert samples("django_websocket_handshakes_total", route="<unrouted>", outcome="rejected") == 1.0


async def test_middleware_records_client_leaving_before_decision_as_abandoned(metrics, samples):
    app = ScriptedApp("receive", "receive")
    await drive(
        wrap(metrics, app),
        {"type": "websocket", "path": "/x/"},
        [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1001}],
    )

    route = {"route": "<unrouted>"}
    assert samples("django_websocket_handshakes_total", outcome="abandoned", **route) == 1.0
    assert samples("django_websocket_connections_closed_total", code="1001", initiator="client", **route) == 0.0


async def test_middleware_records_return_without_decision_as_error(metrics, samples):
    app = ScriptedApp("receive")
    await drive(wrap(metrics, app), {"type": "websocket", "path": "/x/"}, [{"type": "websocket.connect"}])

    assert samples("django_websocket_handshakes_total", route="<unrouted>", outcome="error") == 1.0


# -- scopes, routes and wrapping ----------------------------------------------


async def test_middleware_accepts_scope_with_only_type_and_path(metrics, samples):
    app = ScriptedApp("receive", ACCEPT, "receive")
    await drive(
        wrap(metrics, app),
        {"type": "websocket", "path": "/anything/"},
        [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}],
    )

    assert samples("django_websocket_connections_total", route="<unrouted>") == 1.0


async def test_middleware_labels_route_template_not_path(metrics, samples):
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/chat/lobby/?token=secret")
    await communicator.connect()
    await communicator.disconnect()

    assert samples("django_websocket_connections_total", route="ws/chat/<str:room_name>/") == 1.0
    label_values = {
        value
        for family in metrics.registry.collect()
        for sample in family.samples
        for value in sample.labels.values()
    }
    assert not any("lobby" in value or "secret" in value for value in label_values)


async def test_middleware_labels_unmatched_path(metrics, samples):
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/nope/")
    with pytest.raises(ValueError, match="No route found"):
        await communicator.connect(timeout=0.1)

    assert samples("django_websocket_handshakes_total", route="<unmatched>", outcome="error") == 1.0
    assert samples("django_websocket_exceptions_total", route="<unmatched>", exception_type="ValueError") == 1.0


async def test_middleware_finds_router_through_channels_middleware(metrics, samples):
    app = OriginValidator(AuthMiddlewareStack(router()), ["*"])
    communicator = WebsocketCommunicator(wrap(metrics, app), "/ws/chat/room1/", headers=[(b"origin", b"http://x")])
    connected, _ = await communicator.connect()
    assert connected
    await communicator.disconnect()

    assert samples("django_websocket_connections_total", route="ws/chat/<str:room_name>/") == 1.0


async def test_middleware_applied_twice_counts_once(metrics, samples):
    inner = wrap(metrics, router())
    outer = wrap(metrics, inner)
    communicator = WebsocketCommunicator(outer, "/ws/echo/")
    await communicator.connect()
    await communicator.send_to(text_data="hi")
    await communicator.receive_from()
    await communicator.disconnect()

    route = {"route": "ws/echo/"}
    assert samples("django_websocket_connections_total", **route) == 1.0
    assert samples("django_websocket_handshakes_total", outcome="accepted", **route) == 1.0
    assert samples("django_websocket_messages_received_total", **route) == 1.0
    assert samples("django_websocket_connections_closed_total", code="1000", initiator="client", **route) == 1.0


async def test_middleware_sets_route_in_scope_copy(metrics):
    app = ScriptedApp("receive")
    scope = {"type": "websocket", "path": "/x/"}
    await drive(wrap(metrics, app), scope, [{"type": "websocket.connect"}])

    assert app.scopes[0][SCOPE_KEY] == "<unrouted>"
    assert SCOPE_KEY not in scope


# -- failures of the metrics themselves ---------------------------------------


class Broken:
    def inc(self, amount=1):
        raise RuntimeError("storage failed")

    dec = inc

    def observe(self, amount):
        raise RuntimeError("storage failed")


class BrokenFamily:
    def labels(self, *values):
        return Broken()


async def test_middleware_survives_failing_metric_updates(metrics, monkeypatch, caplog):
    route_metrics = metrics.for_route("ws/echo/")
    broken = Broken()
    for name in ("add_active", "count_connection"):
        monkeypatch.setattr(route_metrics, name, broken.inc)
    monkeypatch.setattr(route_metrics, "message_incs", (broken.inc,) * 4)
    monkeypatch.setattr(route_metrics, "observe_duration", broken.observe)
    monkeypatch.setattr(route_metrics, "count_handshake", {key: broken.inc for key in route_metrics.count_handshake})
    monkeypatch.setattr(route_metrics, "_closed_family", BrokenFamily())
    monkeypatch.setattr(report_failure, "_last_logged", {})

    communicator = WebsocketCommunicator(wrap(metrics), "/ws/echo/")
    with caplog.at_level(logging.ERROR, logger="channels_ws_metrics"):
        connected, _ = await communicator.connect()
        assert connected
        for _ in range(3):
            await communicator.send_to(text_data="still works")
            assert await communicator.receive_from() == "still works"
        await communicator.disconnect()

    kinds = [record.args[0] for record in caplog.records]
    assert kinds.count("adding received messages to the counters") == 1
    assert kinds.count("adding sent messages to the counters") == 1
    assert kinds.count("recording the accepted connection") == 1
    assert kinds.count("recording the handshake") == 1
    assert kinds.count("recording the end of the connection") == 1


async def test_middleware_passes_through_when_setup_fails(metrics, monkeypatch, samples):
    def fail(route):
        raise RuntimeError("registry broken")

    monkeypatch.setattr(metrics, "for_route", fail)
    monkeypatch.setattr(report_failure, "_last_logged", {})
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/echo/")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data="hi")
    assert await communicator.receive_from() == "hi"
    await communicator.disconnect()


# -- reconciliation -----------------------------------------------------------


async def test_middleware_totals_reconcile(metrics, samples):
    for code in (1000, 1001, 4000):
        communicator = WebsocketCommunicator(wrap(metrics), "/ws/echo/")
        await communicator.connect()
        await communicator.disconnect(code=code)
    communicator = WebsocketCommunicator(wrap(metrics), "/ws/close/")
    await communicator.connect()
    await communicator.send_to(text_data="3001")
    await communicator.receive_output()
    await communicator.disconnect()

    for route, expected in (("ws/echo/", 3.0), ("ws/close/", 1.0)):
        closed = sum(
            sample.value
            for family in metrics.registry.collect()
            if family.name == "django_websocket_connections_closed"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["route"] == route
        )
        assert samples("django_websocket_connections_total", route=route) == expected
        assert closed == expected
        assert samples("django_websocket_connection_duration_seconds_count", route=route) == expected
        assert samples("django_websocket_connections_active", route=route) == 0.0
