"""ASGI middleware that records Prometheus metrics for WebSocket connections."""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any, Awaitable, Callable

from .close_codes import DEFAULT_CLOSE_CODE, INTERNAL_ERROR_CODE, NO_STATUS_CODE, CloseCodeLabels
from .conf import get_settings
from .metrics import (
    ABANDONED,
    ACCEPTED,
    CLIENT,
    ERROR,
    OPERATIONS,
    REJECTED,
    SERVER,
    RouteMetrics,
    WebSocketMetrics,
    get_metrics,
)
from .ratelimit import report_failure
from .routing import RouteResolver

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Scope key set on instrumented connections. Its value is the route label;
#: an inner copy of this middleware that finds it passes the connection on
#: without counting it a second time.
SCOPE_KEY = "channels_ws_metrics.route"

#: Code recorded when the application ends after accept with no close from
#: either side (returned or cancelled): RFC 6455's "closed abnormally".
ABNORMAL_CLOSURE_CODE = 1006

class WebSocketMetricsMiddleware:
    """Record Prometheus metrics for every WebSocket connection.

    Wrap the ``"websocket"`` application of Channels' ``ProtocolTypeRouter``
    with it, outside any origin or authentication middleware so that their
    rejections are counted. Other scope types pass straight through.

    ``metrics`` is for tests and embedding: by default the process-wide
    families on prometheus_client's default registry are used, built from
    the ``CHANNELS_WS_METRICS`` setting.
    """

    def __init__(self, app: ASGIApp, *, metrics: WebSocketMetrics | None = None) -> None:
        self.app = app
        self._metrics = metrics
        self._resolve_route = RouteResolver(app)
        if metrics is None:
            # Report a configuration mistake when the ASGI application is
            # built, not inside the first connection.
            get_settings()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or SCOPE_KEY in scope:
            return await self.app(scope, receive, send)

        # From here, so that the handshake duration includes the labels' time.
        started = perf_counter()
        metrics = self._metrics
        route_metrics = None
        # Only the setup may fail into the pass-through below: the
        # application is called outside this block, so it never runs twice.
        try:
            if metrics is None:
                metrics = get_metrics()
            if not (metrics.skip_paths and metrics.skips(scope.get("path"))):
                route = self._resolve_route(scope)
                if metrics.extra_labels.names:
                    route_metrics = metrics.for_route(route, await metrics.extra_labels.values(scope))
                else:
                    route_metrics = metrics.for_route(route)
        except Exception as exc:
            if metrics is None:
                report_failure(OPERATIONS["setup"], exc)
            else:
                metrics.failed("setup", exc)
        if route_metrics is None:
            return await self.app(scope, receive, send)

        scope = dict(scope)
        scope[SCOPE_KEY] = route
        close_code_label = metrics.close_code_label
        app = self.app

        # The rest of the connection lives in this one coroutine, with its
        # state in local variables that the two wrappers share, because a
        # helper coroutine would add a frame to every connection.
        accepted_at: float | None = None
        gauge_raised = False
        decided = False
        client_left = False
        close_code: Any = None
        initiator: str | None = None
        # The exception the server's send raised, if any. Servers raise OSError
        # when the client is gone (uvicorn's ClientDisconnected is one), which is
        # the client leaving, not a failure of the application.
        send_error: OSError | None = None

        # The per-message path adds to these plain counts, which reach the
        # counters in batches (see MessageCounts), and calls only what is
        # bound here: no other attribute or dictionary lookups.
        owner = route_metrics.owner
        failed = owner.failed
        try:
            counts = owner.open_message_counts(route_metrics)
        except Exception as exc:
            # The connection goes on without message counts rather than fail.
            failed("setup", exc)
            counts = None
        observe_received_size = route_metrics.observe_received_size
        observe_sent_size = route_metrics.observe_sent_size
        measure_received = counts is not None or observe_received_size is not None
        measure_sent = counts is not None or observe_sent_size is not None

        def decide(outcome: str, now: float) -> None:
            nonlocal decided
            decided = True
            try:
                route_metrics.count_handshake[outcome](1)
                route_metrics.observe_handshake[outcome](now - started)
            except Exception as exc:
                failed("handshake", exc)

        def client_gone(exc: OSError) -> None:
            nonlocal send_error, client_left, close_code, initiator
            send_error = exc
            client_left = True
            if close_code is None:
                close_code = ABNORMAL_CLOSURE_CODE
                initiator = CLIENT

        async def receive_wrapper() -> Message:
            nonlocal client_left, close_code, initiator
            message = await receive()
            message_type = message["type"]
            if message_type == "websocket.receive":
                if measure_received:
                    try:
                        # The payload length, inlined because it runs for every
                        # message: str.isascii() reads a flag of the string in
                        # CPython, so ASCII text costs no encoding.
                        text = message.get("text")
                        if text is None:
                            data = message.get("bytes")
                            size = len(data) if data else 0
                        elif text.isascii():
                            size = len(text)
                        else:
                            size = len(text.encode("utf-8", "surrogatepass"))
                        if counts is not None:
                            counts.received += 1
                            counts.received_bytes += size
                        if observe_received_size is not None:
                            observe_received_size(size)
                    except Exception as exc:
                        failed("message_received", exc)
            elif message_type == "websocket.disconnect":
                client_left = True
                if close_code is None:
                    code = message.get("code")
                    close_code = NO_STATUS_CODE if code is None else code
                    initiator = CLIENT
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal accepted_at, gauge_raised, close_code, initiator
            message_type = message["type"]
            if message_type == "websocket.send":
                try:
                    await send(message)
                except OSError as exc:
                    client_gone(exc)
                    raise
                if measure_sent:
                    try:
                        # The payload length, as in receive_wrapper().
                        text = message.get("text")
                        if text is None:
                            data = message.get("bytes")
                            size = len(data) if data else 0
                        elif text.isascii():
                            size = len(text)
                        else:
                            size = len(text.encode("utf-8", "surrogatepass"))
                        if counts is not None:
                            counts.sent += 1
                            counts.sent_bytes += size
                        if observe_sent_size is not None:
                            observe_sent_size(size)
                    except Exception as exc:
                        failed("message_sent", exc)
                return

            if message_type == "websocket.accept":
                # Counted only once the server took the accept: a send that
                # raises leaves the connection not accepted.
                try:
                    await send(message)
                except OSError as exc:
                    client_gone(exc)
                    raise
                if not decided:
                    accepted_at = perf_counter()
                    # Separate attempts, so one failing update does not skip the other.
                    try:
                        route_metrics.add_active(1)
                        gauge_raised = True
                    except Exception as exc:
                        failed("accept", exc)
                    try:
                        route_metrics.count_connection(1)
                    except Exception as exc:
                        failed("accept", exc)
                    decide(ACCEPTED, accepted_at)
                return

            closing = False
            if message_type == "websocket.close":
                # Recorded before sending, so the application's decision
                # counts even when the client is already gone and the send fails.
                if close_code is None:
                    code = message.get("code")
                    close_code = DEFAULT_CLOSE_CODE if code is None else code
                    initiator = SERVER
                    closing = True
                if not decided:
                    decide(REJECTED, perf_counter())
            elif message_type == "websocket.http.response.start":
                if not decided:
                    decide(REJECTED, perf_counter())
            try:
                await send(message)
            except OSError as exc:
                client_gone(exc)
                raise
            except Exception:
                if closing:
                    # The server refused the close, for example a code that
                    # daphne or uvicorn will not send, so the client never
                    # got it: the exception rule decides the code instead.
                    close_code = None
                    initiator = None
                raise

        error: Exception | None = None
        cancelled = False
        try:
            await app(scope, receive_wrapper, send_wrapper)
        except asyncio.CancelledError:
            cancelled = True
            raise
        except Exception as exc:
            if exc is not send_error:
                error = exc
            raise
        finally:
            ended = perf_counter()
            if accepted_at is not None:
                if gauge_raised:
                    try:
                        route_metrics.add_active(-1)
                    except Exception as exc:
                        failed("close", exc)
                if close_code is None:
                    close_code = INTERNAL_ERROR_CODE if error is not None else ABNORMAL_CLOSURE_CODE
                    initiator = SERVER
                try:
                    route_metrics.count_closed(close_code_label(close_code), initiator or SERVER)
                except Exception as exc:
                    failed("close", exc)
                try:
                    route_metrics.observe_duration(ended - accepted_at)
                except Exception as exc:
                    failed("close", exc)
            elif not decided:
                if error is not None:
                    outcome = ERROR
                elif client_left or cancelled:
                    outcome = ABANDONED
                else:
                    # The application returned without accepting or closing, so
                    # the server fails the handshake (uvicorn responds with 500).
                    outcome = ERROR
                decide(outcome, ended)

            if error is not None:
                try:
                    route_metrics.count_exception(type(error).__name__)
                except Exception as exc:
                    failed("exception", exc)

            if counts is not None:
                try:
                    owner.close_message_counts(counts)
                except Exception as exc:
                    failed("close", exc)

            if owner.pending_errors:
                owner.flush_errors()
