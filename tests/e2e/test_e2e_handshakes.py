"""Handshake outcomes under daphne and uvicorn: rejections, errors, abandonment."""

import asyncio

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

TIMEOUT = 10.0

ECHO_ROUTE = "ws/echo/"
CHAT_ROUTE = "ws/chat/<str:room_name>/"
TEST_ROUTE = "ws/test/"
UNMATCHED_ROUTE = "<unmatched>"

OUTCOMES = ("accepted", "rejected", "error", "abandoned")

ACTIVE = "django_websocket_connections_active"
CONNECTIONS = "django_websocket_connections_total"
HANDSHAKES = "django_websocket_handshakes_total"
HANDSHAKE_COUNT = "django_websocket_handshake_duration_seconds_count"
HANDSHAKE_SUM = "django_websocket_handshake_duration_seconds_sum"
CLOSED = "django_websocket_connections_closed_total"
EXCEPTIONS = "django_websocket_exceptions_total"


def handshake_decided(before, route):
    """Build a scrape condition: one more handshake on ``route`` has an outcome."""
    return lambda after: after.total_delta(before, HANDSHAKES, route=route) >= 1


def assert_single_outcome(before, after, route, expected):
    """Assert that ``route`` gained one handshake, with outcome ``expected``, and no connection."""
    for outcome in OUTCOMES:
        expected_count = 1 if outcome == expected else 0
        assert after.delta(before, HANDSHAKES, route=route, outcome=outcome) == expected_count, outcome
        assert after.delta(before, HANDSHAKE_COUNT, route=route, outcome=outcome) == expected_count, outcome
    assert after.delta(before, CONNECTIONS, route=route) == 0
    assert after.delta(before, ACTIVE, route=route) == 0
    assert after.total_delta(before, CLOSED, route=route) == 0


async def test_reject_before_accept_counts_rejected(server):
    before = await server.scrape()

    rejection = await server.connect_rejected("/ws/test/?action=reject")
    after = await server.scrape_until(handshake_decided(before, TEST_ROUTE))

    assert rejection.response.status_code == 403
    assert_single_outcome(before, after, TEST_ROUTE, "rejected")
    assert after.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) == 0


async def test_exception_before_accept_counts_error(server):
    before = await server.scrape()

    rejection = await server.connect_rejected("/ws/test/?action=raise_before_accept")
    after = await server.scrape_until(
        lambda m: handshake_decided(before, TEST_ROUTE)(m)
        and m.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) >= 1
    )

    assert rejection.response.status_code == 500
    assert_single_outcome(before, after, TEST_ROUTE, "error")
    assert after.delta(before, EXCEPTIONS, route=TEST_ROUTE, exception_type="RuntimeError") == 1
    assert after.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) == 1


async def test_unmatched_path_counts_error(server):
    before = await server.scrape()

    # Channels' URLRouter raises ValueError("No route found for path ...").
    rejection = await server.connect_rejected("/ws/nope/?x=1")
    after = await server.scrape_until(
        lambda m: handshake_decided(before, UNMATCHED_ROUTE)(m)
        and m.total_delta(before, EXCEPTIONS, route=UNMATCHED_ROUTE) >= 1
    )

    assert rejection.response.status_code == 500
    assert_single_outcome(before, after, UNMATCHED_ROUTE, "error")
    assert after.delta(before, EXCEPTIONS, route=UNMATCHED_ROUTE, exception_type="ValueError") == 1
    assert after.total_delta(before, EXCEPTIONS, route=UNMATCHED_ROUTE) == 1

    label_values = after.label_values("django_websocket_")
    assert not any("nope" in value for value in label_values), label_values
    assert not any("x=1" in value for value in label_values), label_values


async def test_denial_response_counts_rejected(server):
    before = await server.scrape()

    rejection = await server.connect_rejected("/ws/test/?action=deny")
    after = await server.scrape_until(handshake_decided(before, TEST_ROUTE))

    assert rejection.response.status_code == 403
    if server.kind == "uvicorn":
        # Only uvicorn offers the websocket.http.response extension, so only
        # there does the consumer's own body reach the client.
        assert rejection.response.body == b"Denied by TestConsumer (action=deny).\n"
    assert_single_outcome(before, after, TEST_ROUTE, "rejected")
    assert after.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) == 0


async def test_foreign_origin_counts_rejected(server):
    before = await server.scrape()

    # AllowedHostsOriginValidator rejects the handshake before URLRouter
    # runs, yet the label is still the route that the path would match.
    rejection = await server.connect_rejected("/ws/echo/", origin="http://attacker.invalid")
    after = await server.scrape_until(handshake_decided(before, ECHO_ROUTE))

    assert rejection.response.status_code == 403
    assert_single_outcome(before, after, ECHO_ROUTE, "rejected")


async def test_invalid_room_counts_rejected(server):
    before = await server.scrape()

    # "%21" arrives as "!", which Channels group names do not allow.
    rejection = await server.connect_rejected("/ws/chat/bad%21room/")
    after = await server.scrape_until(handshake_decided(before, CHAT_ROUTE))

    assert rejection.response.status_code == 403
    assert_single_outcome(before, after, CHAT_ROUTE, "rejected")


async def test_slow_handshake_duration_measured(server):
    before = await server.scrape()

    websocket = await server.connect("/ws/test/?action=slow&delay=0.2")
    await asyncio.wait_for(websocket.close(), TIMEOUT)
    after = await server.scrape_until(handshake_decided(before, TEST_ROUTE))

    assert after.delta(before, HANDSHAKES, route=TEST_ROUTE, outcome="accepted") == 1
    assert after.delta(before, HANDSHAKE_COUNT, route=TEST_ROUTE, outcome="accepted") == 1
    # The consumer sleeps 0.2 s before accepting, so that is a lower bound.
    assert after.delta(before, HANDSHAKE_SUM, route=TEST_ROUTE, outcome="accepted") >= 0.2


async def test_client_leaving_handshake_counts_abandoned(server):
    before = await server.scrape()

    # A raw upgrade request, so the client can leave while the consumer is
    # still sleeping in connect() and has neither accepted nor rejected.
    _, writer = await server.send_upgrade_request("/ws/test/?action=slow&delay=1")
    # NOTE: nothing observable marks the moment the server hands the request
    # to the application, so the test waits a fixed 0.2 s before leaving.
    # The consumer sleeps 1 s, which leaves it undecided at that point.
    await asyncio.sleep(0.2)
    writer.transport.abort()

    after = await server.scrape_until(handshake_decided(before, TEST_ROUTE))

    if server.kind == "uvicorn":
        # uvicorn raises ClientDisconnected from the late accept.
        assert_single_outcome(before, after, TEST_ROUTE, "abandoned")
    else:
        # daphne takes the late accept without an error and reports the
        # disconnect afterwards, so the application did accept: the
        # connection counts as accepted and closed by the client with the
        # code daphne reports for a dropped connection.
        assert after.delta(before, HANDSHAKES, route=TEST_ROUTE, outcome="accepted") == 1
        assert after.delta(before, HANDSHAKES, route=TEST_ROUTE, outcome="abandoned") == 0
        after = await server.scrape_until(lambda m: m.total_delta(before, CLOSED, route=TEST_ROUTE) >= 1)
        assert after.delta(before, CLOSED, route=TEST_ROUTE, code="1006", initiator="client") == 1
        assert after.delta(before, ACTIVE, route=TEST_ROUTE) == 0
    assert after.total_delta(before, EXCEPTIONS, route=TEST_ROUTE) == 0
