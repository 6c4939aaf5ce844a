"""Scripted WebSocket clients for the storm test, and the samples each should leave.

``draw_plans`` draws the whole mix of clients from ``random.Random(seed)``
before any of them runs. A seed therefore names the same clients, messages
and close codes on every run, and only the interleaving differs. ``run_client``
acts one plan out against a server and returns an ``Outcome``: the metric
samples the server should have added for it, and every client-side
observation that differed from what the plan expects.

The client side decides what every scenario should leave. Where the
server's record depends on which of two events comes first, the plan puts
a wide gap between them (see ``LEAVE_MID_HANDSHAKE_DELAYS``) rather than
accepting either result.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servers import HOST, NETWORK_TIMEOUT, Server

ECHO_ROUTE = "ws/echo/"
TEST_ROUTE = "ws/test/"
CHAT_ROUTE = "ws/chat/<str:room_name>/"
UNMATCHED_ROUTE = "<unmatched>"
ROUTES = (ECHO_ROUTE, TEST_ROUTE, CHAT_ROUTE, UNMATCHED_ROUTE)

ACTIVE = "django_websocket_connections_active"
HANDSHAKES = "django_websocket_handshakes_total"
HANDSHAKE_COUNT = "django_websocket_handshake_duration_seconds_count"
CONNECTIONS = "django_websocket_connections_total"
DURATION_COUNT = "django_websocket_connection_duration_seconds_count"
CLOSED = "django_websocket_connections_closed_total"
EXCEPTIONS = "django_websocket_exceptions_total"
RECEIVED = "django_websocket_messages_received_total"
SENT = "django_websocket_messages_sent_total"
RECEIVED_BYTES = "django_websocket_received_bytes_total"
SENT_BYTES = "django_websocket_sent_bytes_total"

#: Every counter the storm checks, by sample name. The active gauge is
#: checked apart from these, because it must end at 0 rather than grow.
COUNTED_SAMPLES = (
    HANDSHAKES,
    HANDSHAKE_COUNT,
    CONNECTIONS,
    DURATION_COUNT,
    CLOSED,
    EXCEPTIONS,
    RECEIVED,
    SENT,
    RECEIVED_BYTES,
    SENT_BYTES,
)

# Code each server puts in websocket.disconnect when the client drops the
# TCP connection after the handshake without a close frame: 1006 from
# daphne 4.2.3 (Autobahn), 1005 from uvicorn 0.55 (websockets-sansio).
ABORT_CODES = {"daphne": "1006", "uvicorn": "1005"}

# Close code that the client of a consumer that raised after accept
# reports: daphne 4.2.3 sends a close frame with 1011, and uvicorn 0.55
# drops the connection (1006 at the client).
RAISE_AFTER_ACCEPT_CLIENT_CODES = {"daphne": 1011, "uvicorn": 1006}

# Close codes that an application may put in websocket.close, by server.
# Autobahn (daphne 4.2.3) accepts 1000 and 3000-4999 and raises a plain
# Exception ("invalid close code") for any other code. websockets
# (uvicorn 0.55) also accepts the codes RFC 6455 lets an endpoint send,
# and raises ProtocolError for the rest (1004-1006, 1015 and codes outside
# 1000-4999).
SENDABLE_RFC_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def server_can_send(server_kind: str, code: int) -> bool:
    if 3000 <= code <= 4999 or code == 1000:
        return True
    return server_kind == "uvicorn" and code in SENDABLE_RFC_CODES


# Whether the server delivers a frame with an empty payload. daphne 4.2.3
# drops empty text and binary frames that the application sends (its
# handle_reply tests the payload for truth), yet the send succeeds, so the
# middleware counts them as sent.
EMPTY_FRAMES_DELIVERED = {"daphne": False, "uvicorn": True}

# Exception class that escapes the consumer when the server raises for an
# invalid close code, and the code the client then reports instead.
INVALID_CLOSE_EXCEPTIONS = {"daphne": "Exception", "uvicorn": "ProtocolError"}
INVALID_CLOSE_CLIENT_CODES = {"daphne": 1011, "uvicorn": 1006}

# The consumer sleeps this long in connect() while the client leaves
# after LEAVE_MID_HANDSHAKE_WAITS. The gap of at least 0.9 s is the time
# the server has to notice the client leaving before the consumer accepts.
# NOTE: a server event loop lagging by more than that would turn uvicorn's
# "abandoned" into an accepted connection closed with 1005.
LEAVE_MID_HANDSHAKE_DELAYS = (1.0, 2.0)
LEAVE_MID_HANDSHAKE_WAITS = (0.0, 0.1)

# Bound on one client from start to end, over and above the per-step
# NETWORK_TIMEOUT. The slowest plan sleeps 0.5 s in the handshake and
# exchanges a few messages.
CLIENT_TIMEOUT = 4 * NETWORK_TIMEOUT

# Characters of 2, 3 and 4 bytes in UTF-8, so byte counts differ from
# character counts.
NON_ASCII_ALPHABET = "éüßñçøÅΩπжД€✓→中文字日本語한국🎉😀🚀"
ASCII_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;!?-_"

# Scenario names with their weights in the mix.
SCENARIO_WEIGHTS = {
    "client_close": 16,
    "client_close_without_code": 4,
    "server_close": 14,
    "abort": 12,
    "raise_after_accept": 6,
    "slow": 6,
    "chat": 4,
    "reject": 5,
    "deny": 3,
    "foreign_origin": 3,
    "invalid_room": 2,
    "raise_before_accept": 5,
    "unmatched": 5,
    "leave_mid_handshake": 5,
    "no_request": 2,
    "partial_request": 2,
}

Payload = str | bytes


@dataclass(frozen=True)
class ClientPlan:
    """One client of the storm, fully decided before the storm starts."""

    index: int
    scenario: str
    path: str
    messages: tuple[Payload, ...] = ()
    # For client closes: the code the client sends. For server closes: the
    # code the consumer is asked to send, None for a close without a code.
    close_code: int | None = None
    # For leave_mid_handshake: seconds between the request and leaving.
    wait: float = 0.0

    def describe(self) -> str:
        sizes = ", ".join(f"{type(message).__name__}[{len(message)}]" for message in self.messages)
        return f"client {self.index} {self.scenario} {self.path} code={self.close_code} messages=[{sizes}]"


@dataclass
class Outcome:
    """What one client did: the samples it should have added, and what went wrong."""

    plan: ClientPlan
    samples: Counter[tuple[str, frozenset[tuple[str, str]]]] = field(default_factory=Counter)
    # Handshakes the server should count for this client: 0 when the client
    # never completes an upgrade request, else 1.
    attempts: int = 0
    problems: list[str] = field(default_factory=list)
    # The step the client is in, for failure messages.
    step: str = "starting"
    # Transports the client opened, aborted in the end whatever happened.
    transports: list[asyncio.BaseTransport] = field(default_factory=list)

    def add(self, name: str, value: float = 1, **labels: str) -> None:
        self.samples[(name, frozenset(labels.items()))] += value

    def handshake(self, route: str, outcome: str) -> None:
        self.attempts += 1
        self.add(HANDSHAKES, route=route, outcome=outcome)
        self.add(HANDSHAKE_COUNT, route=route, outcome=outcome)

    def accepted(self, route: str) -> None:
        self.handshake(route, "accepted")
        self.add(CONNECTIONS, route=route)
        self.add(DURATION_COUNT, route=route)

    def closed(self, route: str, code: str, initiator: str) -> None:
        self.add(CLOSED, route=route, code=code, initiator=initiator)

    def exception(self, route: str, exception_type: str) -> None:
        self.add(EXCEPTIONS, route=route, exception_type=exception_type)

    def client_sent(self, route: str, payload: Payload) -> None:
        self.add(RECEIVED, route=route)
        self.add(RECEIVED_BYTES, payload_size(payload), route=route)

    def client_received(self, route: str, payload: Payload) -> None:
        self.add(SENT, route=route)
        self.add(SENT_BYTES, payload_size(payload), route=route)

    def problem(self, text: str) -> None:
        self.problems.append(f"{self.plan.describe()}: {text}")


def payload_size(payload: Payload) -> int:
    """Return the payload size the metrics count: UTF-8 bytes of text, length of binary."""
    return len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)


def close_code_label(code: int) -> str:
    """Return the ``code`` label of a close code with the default settings."""
    if 1000 <= code <= 1015:
        return str(code)
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return "other"


# Drawing plans


def draw_plans(seed: int, count: int) -> list[ClientPlan]:
    rng = random.Random(seed)
    names = list(SCENARIO_WEIGHTS)
    weights = list(SCENARIO_WEIGHTS.values())
    return [_draw_plan(rng, index, rng.choices(names, weights)[0]) for index in range(count)]


def _draw_plan(rng: random.Random, index: int, scenario: str) -> ClientPlan:
    if scenario in ("client_close", "abort"):
        path = rng.choice(("/ws/echo/", "/ws/test/?action=echo"))
        return ClientPlan(index, scenario, path, _draw_messages(rng), _draw_client_close_code(rng))

    if scenario == "client_close_without_code":
        return ClientPlan(index, scenario, "/ws/echo/")

    if scenario == "server_close":
        code = _draw_server_close_code(rng)
        path = "/ws/test/?action=server_close" + ("" if code is None else f"&code={code}")
        return ClientPlan(index, scenario, path, (_draw_message(rng),), code)

    if scenario == "raise_after_accept":
        return ClientPlan(index, scenario, "/ws/test/?action=raise_after_accept", (_draw_message(rng),))

    if scenario == "slow":
        delay = round(rng.uniform(0.05, 0.5), 2)
        path = f"/ws/test/?action=slow&delay={delay}"
        return ClientPlan(index, scenario, path, _draw_messages(rng), _draw_client_close_code(rng))

    if scenario == "chat":
        texts = tuple(_draw_text(rng) for _ in range(rng.randint(1, 3)))
        return ClientPlan(index, scenario, f"/ws/chat/storm-{index}/", texts, 1000)

    if scenario in ("reject", "deny", "raise_before_accept"):
        return ClientPlan(index, scenario, f"/ws/test/?action={scenario}")

    if scenario == "foreign_origin":
        return ClientPlan(index, scenario, "/ws/echo/")

    if scenario == "invalid_room":
        # "%21" arrives as "!", which Channels group names do not allow.
        return ClientPlan(index, scenario, f"/ws/chat/storm{index}%21/")

    if scenario == "unmatched":
        segment = quote(_draw_text(rng)[:20] or "x", safe="")
        return ClientPlan(index, scenario, f"/ws/storm-{index}-{segment}/?q={index}")

    if scenario == "leave_mid_handshake":
        delay = round(rng.uniform(*LEAVE_MID_HANDSHAKE_DELAYS), 2)
        wait = round(rng.uniform(*LEAVE_MID_HANDSHAKE_WAITS), 3)
        return ClientPlan(index, scenario, f"/ws/test/?action=slow&delay={delay}", wait=wait)

    if scenario in ("no_request", "partial_request"):
        return ClientPlan(index, scenario, "/ws/echo/")
    raise ValueError(f"Unknown storm scenario {scenario!r}; expected one of {sorted(SCENARIO_WEIGHTS)}.")


def _draw_client_close_code(rng: random.Random) -> int:
    return rng.choice((1000, 1001, rng.randint(3000, 3999), rng.randint(4000, 4999)))


def _draw_server_close_code(rng: random.Random) -> int | None:
    group = rng.choices(("none", "kept", "rfc", "3xxx", "4xxx", "unsendable"), (2, 4, 2, 3, 3, 1))[0]
    if group == "none":
        return None
    if group == "kept":
        return rng.choice((1000, 1001))
    if group == "rfc":
        return rng.choice(sorted(SENDABLE_RFC_CODES - {1000, 1001}))
    if group == "3xxx":
        return rng.randint(3000, 3999)
    if group == "4xxx":
        return rng.randint(4000, 4999)
    return rng.choice((999, 1004, 1005, 1006, 1015, 1016, 2999, 5000))


def _draw_messages(rng: random.Random) -> tuple[Payload, ...]:
    return tuple(_draw_message(rng) for _ in range(rng.randint(0, 4)))


def _draw_message(rng: random.Random) -> Payload:
    if rng.random() < 0.03:
        # Large enough for a 16-bit or 64-bit frame length field.
        size = rng.randint(5_000, 70_000)
        if rng.random() < 0.5:
            return rng.randbytes(size)
        return "".join(rng.choices(ASCII_ALPHABET + NON_ASCII_ALPHABET, k=size))
    kind = rng.choice(("ascii", "non_ascii", "binary"))
    if kind == "binary":
        return rng.randbytes(rng.randint(0, 128))
    if kind == "ascii":
        return "".join(rng.choices(ASCII_ALPHABET, k=rng.randint(0, 64)))
    return _draw_text(rng)


def _draw_text(rng: random.Random) -> str:
    return "".join(rng.choices(ASCII_ALPHABET + NON_ASCII_ALPHABET, k=rng.randint(1, 40)))


# Running plans


async def run_client(server: Server, plan: ClientPlan) -> Outcome:
    outcome = Outcome(plan)
    act = _SCENARIOS[plan.scenario]
    try:
        await asyncio.wait_for(act(server, plan, outcome), CLIENT_TIMEOUT)
    except Exception as exc:
        outcome.problem(f"the client failed while {outcome.step} with {exc!r}")
    finally:
        # A client that failed half-way leaves no connection open, neither
        # on the server nor for the garbage collector to report later.
        for transport in outcome.transports:
            transport.abort()
    return outcome


async def _connect(server: Server, plan: ClientPlan, outcome: Outcome, **options: str | None) -> ClientConnection:
    outcome.step = "opening the WebSocket"
    websocket = await server.connect(plan.path, **options)
    outcome.transports.append(websocket.transport)
    return websocket


async def _send_upgrade_request(
    server: Server, plan: ClientPlan, outcome: Outcome
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    outcome.step = "sending the upgrade request"
    reader, writer = await server.send_upgrade_request(plan.path)
    outcome.transports.append(writer.transport)
    return reader, writer


async def _client_close(server: Server, plan: ClientPlan, outcome: Outcome) -> None:
    route = _route_of(plan.path)
    websocket = await _connect(server, plan, outcome)
    outcome.accepted(route)
    await _echo_messages(websocket, plan, outcome, route, server.kind)

    outcome.step = "closing"
    await asyncio.wait_for(websocket.close(code=plan.close_code), NETWORK_TIMEOUT)
    outcome.closed(route, close_code_label(plan.close_code), "client")


async def _abort(server: Server, plan: ClientPlan, outcome: Outcome) -> None:
    route = _route_of(plan.path)
    websocket = await _connect(server, plan, outcome)
    outcome.accepted(route)
    # Every echo has arrived before the abort, so the server has nothing
    # left to send when it learns that the connection is gone.
    await _echo_messages(websocket, plan, outcome, route, server.kind)

    outcome.step = "aborting"
    websocket.transport.abort()
    await asyncio.wait_for(websocket.wait_closed(), NETWORK_TIMEOUT)
    outcome.closed(route, ABORT_CODES[server.kind], "client")


async def _client_close_without_code(server: Server, plan: ClientPlan, outcome: Outcome) -> None:
    reader, writer = await _send_upgrade_request(server, plan, outcome)
    outcome.step = "reading the handshake response"
    response_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), NETWORK_TIMEOUT)
    if not response_head.startswith(b"HTTP/1.1 101 "):
        outcome.problem(f"expected HTTP 101, got {response_head[:40]!r}")
        return
    outcome.accepted(ECHO_ROUTE)

    # A masked close frame with an empty payload: FIN and opcode 8, then
    # the mask bit with length 0, then the 4-byte mask.
    outcome.step = "closing without a code"
    writer.write(b"\x88\x80" + os.urandom(4))
    await asyncio.wait_for(writer.drain(), NETWORK_TIMEOUT)
    reply_head = await asyncio.wait_for(reader.readexactly(2), NETWORK_TIMEOUT)
    if reply_head[0] != 0x88:
        outcome.problem(f"expected a close frame in reply, got {reply_head!r}")
    outcome.closed(ECHO_ROUTE, "1005", "client")
    writer.close()


async def _server_close(server: Server, plan: ClientPlan, outcome: Outcome) -> None:
    websocket = await _connect(server, plan, outcome)
    outcome.accepted(TEST_ROUTE)
    await websocket.send(plan.messages[0])
    outcome.client_sent(TEST_ROUTE, plan.messages[0])

    outcome.step = "waiting for the server's close"
    await asyncio.wait_for(websocket.wait_closed(), NETWORK_TIMEOUT)

    # A code the server will not send makes its send raise. That exception
    # escapes the consumer, so the middleware records the close as an
    # exception after accept, and the client receives another code.
    code = 1000 if plan.close_code is None else plan.close_code
    expected_client_code = code
    if server_can_send(server.kind, code):
        outcome.closed(TEST_ROUTE, close_code_label(code), "server")
    else:
        outcome.closed(TEST_ROUTE, "1011", "server")
        outcome.exception(TEST_ROUTE, INVALID_CLOSE_EXCEPTIONS[server.kind])
        expected_client_code = INVALID_CLOSE_CLIENT_CODES[server.kind]
    _check_close_code(outcome, websocket, expected_client_code)


async def _raise_after_accept(server: Server, plan: ClientPlan, outcome: Outcome) -> None:
    websocket = await _connect(server, plan, outcome)
    outcome.accepted(TEST_ROUTE)
    await websocket.send(plan.messages[0])
    outcome.client_sent(TEST_ROUTE, plan.messages[0])

    outcome.step = "waiting for the server's close"
    await asyncio.wait_for(websocket.wait_closed(), NETWORK_TIMEOUT)
    outcome.closed(TEST_ROUTE, "1011", "server")
    outcome.exception(TEST_ROUTE, "ValueError")

    expected_client_code = RAISE_AFTER_ACCEPT_CLIENT_CODES[server.kind]
    _check_close_code(outcome, websocket, expected_client_code)


async def _chat(server: Server, plan: ClientPlan, outcome: Outcome) -> None:
    websocket = await _connect(server, plan, outcome)
    outcome.accepted(CHAT_ROUTE)
    for number, text in enumerate(plan.messages, 1):
        outcome.step = f"exchanging chat message {number} of {len(plan.messages)}"
        request = json.dumps({"message": text}, ensure_ascii=False)
        await websocket.send(request)
        outcome.client_sent(CHAT_ROUTE, request)
        # The room is this client's alone, so the broadcast comes back to it
        # only. The consumer serialises its reply itself, so the byte count
        # comes from the reply as received.
        reply = await asyncio.wait_for(websocket.recv(), NETWORK_TIMEOUT)
        outcome.client_received(CHAT_ROUTE, reply)
        if json.loads(reply) != {"message": text}:
            outcome.problem(f"expected the broadcast of {text!r}, got {reply!r}")

    outcome.step = "closing"
    await asyncio.wait_for(websocket.close(code=plan.close_code), NETWORK_TIMEOUT)
    outcome.closed(CHAT_ROUTE, close_code_label(plan.close_code), "client")


async def _rejected(server: Server, plan: ClientPlan, outcome: Outcome) -> None:
    origin = "http://foreign.invalid" if plan.scenario == "foreign_origin" else None
    route = _route_of(plan.path)
    try:
        websocket = await _connect(server, plan, outcome, origin=origin)
    except InvalidStatus as exc:
        status = exc.response.status_code
    else:
        await asyncio.wait_for(websocket.close(), NETWORK_TIMEOUT)
        outcome.problem("expected the server to refuse the handshake, but it accepted it")
        return

    if plan.scenario in ("raise_before_accept", "unmatched"):
        expected_status = 500
        outcome.handshake(route, "error")
        # Channels' URLRouter raises ValueError for a path no route matches.
        outcome.exception(route, "RuntimeError" if plan.scenario == "raise_before_accept" else "ValueError")
    else:
        expected_status = 403
        outcome.handshake(route, "rejected")
    if status != expected_status:
        outcome.problem(f"expected HTTP {expected_status}, got {status}")


async def _leave_mid_handshake(server: Server, plan: ClientPlan, outcome: Outcome) -> None:
    _, writer = await _send_upgrade_request(server, plan, outcome)
    outcome.step = "waiting to leave"
    await asyncio.sleep(plan.wait)
    writer.transport.abort()

    if server.kind == "uvicorn":
        # uvicorn raises ClientDisconnected (an OSError) from the late
        # accept, so the application never counts as accepted.
        outcome.handshake(TEST_ROUTE, "abandoned")
    else:
        # daphne takes the late accept without an error and reports the
        # lost connection afterwards.
        outcome.accepted(TEST_ROUTE)
        outcome.closed(TEST_ROUTE, "1006", "client")


async def _no_request(server: Server, plan: ClientPlan, outcome: Outcome) -> None:
    # No complete upgrade request reaches the server, so no application
    # runs and nothing is counted.
    outcome.step = "connecting"
    _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, server.port), NETWORK_TIMEOUT)
    outcome.transports.append(writer.transport)
    if plan.scenario == "partial_request":
        writer.write(f"GET {plan.path} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\nUpgrade: websocket\r\n".encode())
        await asyncio.wait_for(writer.drain(), NETWORK_TIMEOUT)
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), NETWORK_TIMEOUT)


async def _echo_messages(
    websocket: ClientConnection, plan: ClientPlan, outcome: Outcome, route: str, server_kind: str
) -> None:
    for number, message in enumerate(plan.messages, 1):
        outcome.step = f"exchanging message {number} of {len(plan.messages)}"
        await websocket.send(message)
        outcome.client_sent(route, message)
        if not message and not EMPTY_FRAMES_DELIVERED[server_kind]:
            # The consumer's echo is counted as sent but never arrives. The
            # consumer handles frames in order, so the echo is counted
            # before anything the client sends next.
            outcome.client_received(route, message)
            continue

        try:
            reply = await asyncio.wait_for(websocket.recv(), NETWORK_TIMEOUT)
        except ConnectionClosed as exc:
            outcome.problem(f"the connection closed before the echo arrived: {exc!r}")
            raise
        outcome.client_received(route, reply)
        if reply != message:
            outcome.problem(f"expected the echo of a {type(message).__name__}[{len(message)}], got {reply!r:.80}")


def _check_close_code(outcome: Outcome, websocket: ClientConnection, expected: int) -> None:
    if websocket.close_code == expected:
        return
    protocol = websocket.protocol
    outcome.problem(
        f"expected close code {expected}, got {websocket.close_code} "
        f"(close frame received: {protocol.close_rcvd}, sent: {protocol.close_sent}, "
        f"error: {protocol.close_exc!r})"
    )


def _route_of(path: str) -> str:
    if path.startswith("/ws/echo/"):
        return ECHO_ROUTE
    if path.startswith("/ws/test/"):
        return TEST_ROUTE
    if path.startswith("/ws/chat/"):
        return CHAT_ROUTE
    return UNMATCHED_ROUTE


_SCENARIOS = {
    "client_close": _client_close,
    "client_close_without_code": _client_close_without_code,
    "server_close": _server_close,
    "abort": _abort,
    "raise_after_accept": _raise_after_accept,
    "slow": _client_close,
    "chat": _chat,
    "reject": _rejected,
    "deny": _rejected,
    "foreign_origin": _rejected,
    "invalid_room": _rejected,
    "raise_before_accept": _rejected,
    "unmatched": _rejected,
    "leave_mid_handshake": _leave_mid_handshake,
    "no_request": _no_request,
    "partial_request": _no_request,
}
